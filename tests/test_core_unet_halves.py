"""The UNet in two halves (core/unet_halves.py) against diffusers' whole UNet with ControlNet
residuals, bit for bit on the CPU: SD 2.1 and SDXL (text/time embedding), a latent size that is not a
multiple of the up factor (forwarded upsample sizes), an attached IP-Adapter; and a stream with a
ControlNet gives the same frames with and without halves."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from dreamcam.core.config import StreamConfig
from dreamcam.core.controlnet import ControlNetStack, ControlNetUnit, load_controlnet
from dreamcam.core.ip_adapter import load_ip_adapter
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.modules import CONTROL_MID, control_residual_names, eager_modules
from dreamcam.core.preprocess import Canny
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_controlnet, make_tiny_ip_adapter, make_tiny_model
from dreamcam.core.unet_halves import EagerUNetHalves


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-halves"), "sdxl")


def inputs(unet: UNet2DConditionModel, height: int, width: int, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    c = unet.config
    sample = torch.randn(2, c.in_channels, height, width, generator=gen)
    timestep = torch.tensor([801, 501])
    embeds = torch.randn(2, 7, c.cross_attention_dim, generator=gen)
    cond = {}
    if c.addition_embed_type == "text_time":
        text_dim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        cond = {"text_embeds": torch.randn(2, text_dim, generator=gen),
                "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    return sample, timestep, embeds, cond


def residuals_for(halves: EagerUNetHalves, args: tuple, cond: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = halves.down(*args, **cond)
    down = [torch.randn(s.shape, generator=gen) * 0.1 for s in state.skips]
    named = dict(zip(control_residual_names(len(down)), [*down, torch.randn(state.hidden.shape, generator=gen) * 0.1]))
    assert CONTROL_MID in named
    return named


def whole(unet: UNet2DConditionModel, args: tuple, cond: dict, named: dict) -> torch.Tensor:
    added = dict(cond)
    if "image_embeds" in added:
        added["image_embeds"] = [added["image_embeds"]]
    down = [named[n] for n in sorted((n for n in named if n != CONTROL_MID), key=lambda n: int(n.rsplit("_", 1)[1]))]
    return unet(*args, added_cond_kwargs=added or None, down_block_additional_residuals=down,
                mid_block_additional_residual=named[CONTROL_MID], return_dict=False)[0]


@pytest.mark.parametrize("family", ["sd21", "sdxl"])
@pytest.mark.parametrize("size", [(8, 8), (5, 9)])  # 5 x 9 latents: not a multiple of the up factor
@torch.no_grad()
def test_halves_compute_the_whole_unet_with_residuals_bit_for_bit(family, size, tiny_model_dir, sdxl_dir):
    folder = tiny_model_dir if family == "sd21" else sdxl_dir
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    halves = EagerUNetHalves.of(unet)
    assert halves is not None
    sample, timestep, embeds, cond = inputs(unet, *size)
    args = (sample, timestep, embeds)
    named = residuals_for(halves, args, cond)
    out = halves.up(halves.down(*args, **cond), **named)
    assert torch.equal(out, whole(unet, args, cond, named))
    plain = halves.up(halves.down(*args, **cond))  # no residuals: the plain UNet
    assert torch.equal(plain, unet(*args, added_cond_kwargs=cond or None, return_dict=False)[0])


@torch.no_grad()
def test_halves_with_an_attached_ip_adapter(tiny_sd15_dir, tmp_path):
    comp = load_components(ModelSpec(str(tiny_sd15_dir), tiny_vae=str(tiny_sd15_dir / "taesd"), local_files_only=True))
    weights = make_tiny_ip_adapter(tiny_sd15_dir, tmp_path / "ip" / "models" / "ip-adapter_test.safetensors", seed=1)
    adapter = load_ip_adapter(str(weights), comp, local_files_only=True)
    adapter.attach()
    try:
        unet = comp.unet
        halves = EagerUNetHalves.of(unet)
        sample, timestep, embeds, _ = inputs(unet, 8, 8)
        image = adapter.image_embeds.expand(2, *adapter.image_embeds.shape[1:]).clone()
        cond = {"image_embeds": image + 0.5}
        args = (sample, timestep, embeds)
        named = residuals_for(halves, args, cond)
        assert torch.equal(halves.up(halves.down(*args, **cond), **named), whole(unet, args, cond, named))
    finally:
        adapter.detach()


def test_halves_refuse_unknown_inputs_and_unets_they_do_not_cover(tiny_model_dir):
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet")
    halves = EagerUNetHalves.of(unet)
    sample, timestep, embeds, _ = inputs(unet, 8, 8)
    with pytest.raises(TypeError, match="unknown conditioning"):
        halves.down(sample, timestep, embeds, hint=sample)
    with pytest.raises(TypeError, match="unknown input"):
        halves.up(halves.down(sample, timestep, embeds), residual=sample)
    lcm_like = UNet2DConditionModel(**{**unet.config, "time_cond_proj_dim": 32})
    assert EagerUNetHalves.of(lcm_like) is None  # a timestep condition: the whole UNet is called
    assert EagerUNetHalves.of(torch.nn.Linear(2, 2)) is None


def test_a_stream_with_a_controlnet_gives_the_same_frames_with_and_without_halves(tiny_model_dir, tmp_path):
    comp = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), local_files_only=True))
    net = load_controlnet(str(make_tiny_controlnet(tiny_model_dir, tmp_path / "cn", seed=4)), comp, local_files_only=True)
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    outs = []
    for halves in (True, False):
        modules = eager_modules(comp)
        assert modules.unet_halves is not None
        if not halves:
            modules = dataclasses.replace(modules, unet_halves=None)
        stream = StreamDiffusion(comp, StreamConfig(width=64, height=64, t_index_list=(20, 35), cfg_type="self",
                                                    prompt="the cat"), modules=modules)
        stream.set_controlnets(ControlNetStack([ControlNetUnit("canny", net, Canny(20, 60), scale=0.8)]))
        outs.append([stream(f) for f in frames])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@torch.no_grad()
def test_cast_halves_compute_what_the_cast_whole_unet_computes(tiny_model_dir):
    """The engines' precision wrapper (compute float64 behind float32 io here, as fp16 behind fp32 on a GPU)."""
    from dreamcam.core.modules import EagerUNet
    from dreamcam.engines.contract import StepModules
    from dreamcam.engines.eager import cast_modules

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet").double().eval()
    plain = StepModules(unet=EagerUNet(unet), encode=lambda x: x, decode=lambda x: x,
                        unet_halves=EagerUNetHalves.of(unet))
    cast = cast_modules(plain, torch.float64, torch.float32)
    sample, timestep, embeds, _ = inputs(unet, 8, 8)
    args = (sample, timestep, embeds)
    named = {k: v.float() for k, v in residuals_for(plain.unet_halves, tuple(a.double() if a.is_floating_point() else a
                                                                              for a in args), {}).items()}
    out = cast.unet_halves.up(cast.unet_halves.down(*args), **named)
    assert out.dtype == torch.float32
    assert torch.equal(out, cast.unet(*args, **named))
