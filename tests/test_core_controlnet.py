"""ControlNets (core/controlnet.py) in the stream against diffusers' StableDiffusionControlNetImg2ImgPipeline:
one step with one net and with two nets, live scales, scale 0 = no work, family errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionControlNetImg2ImgPipeline

from dreamcam.core.config import StreamConfig
from dreamcam.core.controlnet import ControlNetError, ControlNetStack, ControlNetUnit, load_controlnet, residual_shapes
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.preprocess import Canny, SoftEdge
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_controlnet, make_tiny_model

SIZE, SEED = 64, 7


@pytest.fixture(scope="module")
def comp(tiny_sd15_dir):
    return load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=str(tiny_sd15_dir / "taesd"), local_files_only=True))


@pytest.fixture(scope="module")
def nets(comp, tiny_sd15_dir, tmp_path_factory):
    """Two different tiny ControlNets of the SD 1.5 UNet, saved and loaded by our loader."""
    root = tmp_path_factory.mktemp("controlnets")
    return [load_controlnet(str(make_tiny_controlnet(tiny_sd15_dir, root / f"net{i}", seed=i)), comp,
                            local_files_only=True) for i in (1, 2)]


def frame(seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1)
    img = np.clip(127.5 * (base + 1) + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    img[16:48, 16:48] = 255  # a square: edges for the canny net
    return img


def images_of(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb)[None].permute(0, 3, 1, 2).float() / 127.5 - 1


def config(**kw) -> StreamConfig:
    base = dict(width=SIZE, height=SIZE, t_index_list=(25,), cfg_type="full", guidance_scale=3.0, seed=SEED,
                prompt="the cat", negative_prompt="an ant")
    return StreamConfig(**{**base, **kw})


def reference(comp, nets, controls, scales, image):
    """diffusers' ControlNet img2img pipeline, LCM at 2 steps and strength 0.5 = one step at t=499."""
    many = len(nets) > 1
    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer, unet=comp.unet,
        controlnet=list(nets) if many else nets[0], scheduler=LCMScheduler.from_config(comp.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe("the cat", image=image.astype(np.float32)[None] / 255.0,
                control_image=list(controls) if many else controls[0], strength=0.5, num_inference_steps=2,
                guidance_scale=3.0, negative_prompt="an ant", generator=torch.Generator().manual_seed(SEED),
                controlnet_conditioning_scale=list(scales) if many else scales[0], output_type="np").images[0]


@pytest.mark.parametrize("count", [1, 2])
def test_one_step_with_controlnets_equals_diffusers_pipeline(comp, nets, count):
    image = frame()
    pres, scales = [Canny(50, 120), SoftEdge()][:count], [0.8, 0.6][:count]
    units = [ControlNetUnit(f"net{i}", nets[i], pres[i], scales[i]) for i in range(count)]
    stream = StreamDiffusion(comp, config())
    stream.set_controlnets(ControlNetStack(units))
    got = stream(image).astype(np.float32) / 255.0
    controls = [p(images_of(image)) for p in pres]  # the same control images, given to diffusers
    want = reference(comp, nets[:count], controls, scales, image)
    assert np.abs(got - want).max() <= 0.6 / 255.0
    plain = StreamDiffusion(comp, config())(image).astype(np.float32) / 255.0
    assert np.abs(plain - want).max() > 5 / 255.0  # the ControlNets really steer the image


def test_scale_is_live_and_zero_skips_the_net(comp, nets):
    calls = []
    hook = nets[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        unit = ControlNetUnit("canny", nets[0], Canny(50, 120), 0.0)
        stack = ControlNetStack([unit])
        stream = StreamDiffusion(comp, config(cfg_type="self", guidance_scale=1.2))
        plain_key = stream.shape_key
        stream.set_controlnets(stack)
        assert stream.controlnets is stack and stream.shape_key == plain_key  # no net runs: the plain step
        plain = StreamDiffusion(comp, config(cfg_type="self", guidance_scale=1.2))
        image = frame()
        assert np.array_equal(stream(image), plain(image)) and calls == []  # scale 0: the net does no work
        assert stack.structure_key == ()
        scale_ptr = unit.scale_tensor.data_ptr()
        stream.set_controlnet_scales({"canny": 0.5})
        on_key = stream.shape_key
        assert on_key != plain_key  # a scale crossing 0 changes the structure
        half = stream(image)
        stack.set_scales({"canny": 1.0})
        assert stream.shape_key == on_key  # a scale change is not a structure change
        full = stream(image)
        assert len(calls) == 2 and stack.structure_key[1:] == (("canny",),)
        assert unit.scale_tensor.data_ptr() == scale_ptr  # rewritten in place: a captured graph sees it
        base = plain(image).astype(int)
        assert 0 < np.abs(half.astype(int) - base).mean() < np.abs(full.astype(int) - base).mean()
        for bad in ({"canny": float("nan")}, {"depth": 1.0}):
            with pytest.raises(ControlNetError):
                stack.set_scales(bad)
        assert unit.scale == 1.0
    finally:
        hook.remove()


@pytest.mark.parametrize("latent", [(8, 8), (8, 12)])
def test_residual_shapes_match_the_nets_outputs(comp, nets, latent):
    h, w = latent
    unit = ControlNetUnit("canny", nets[0], Canny(), 1.0)
    stack = ControlNetStack([unit])
    stack.prepare(torch.zeros(1, 3, 8 * h, 8 * w))
    res = stack.residuals(torch.randn(3, 4, h, w), torch.tensor([499] * 3),
                          torch.randn(3, 77, 768))
    want = residual_shapes(nets[0].config, h, w)
    assert list(res) == list(want)
    assert {k: tuple(v.shape[1:]) for k, v in res.items()} == want and all(v.shape[0] == 3 for v in res.values())


@pytest.mark.parametrize("family, label", [("sd21", "SD 2.1 / SD-Turbo"), ("sdxl", "SDXL")])
def test_a_controlnet_of_another_family_is_one_clear_error(comp, tmp_path, family, label):
    other = make_tiny_controlnet(make_tiny_model(tmp_path / family, family, with_taesd=False), tmp_path / "net")
    with pytest.raises(ControlNetError) as info:
        load_controlnet(str(other), comp, local_files_only=True)
    message = str(info.value)
    assert str(other) in message and f"an {label} ControlNet" in message and "loaded model is SD 1.5" in message
    assert len(message.splitlines()) == 1


def test_missing_or_broken_controlnets_name_the_thing(comp, tmp_path):
    with pytest.raises(ControlNetError, match="no such file or folder"):
        load_controlnet("/no/such/controlnet", comp, local_files_only=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ControlNetError, match="cannot load the ControlNet"):
        load_controlnet(str(empty), comp, local_files_only=True)
