"""IP-Adapter (core/ip_adapter.py) in the stream against diffusers' load_ip_adapter + set_ip_adapter_scale path:
one img2img step equals StableDiffusion(XL)Img2ImgPipeline with ip_adapter_image, live scale and image,
attach / detach, and the bad inputs (not an image, another family, missing files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (LCMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline,
                       UNet2DConditionModel)
from PIL import Image
from safetensors.torch import save_file

from dreamcam.core.config import StreamConfig
from dreamcam.core.ip_adapter import IPAdapterError, IPAttnProcessor, load_ip_adapter
from dreamcam.core.loading import ModelLoadError, ModelSpec, load_components
from dreamcam.core.modules import EagerUNet
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import ip_adapter_state, make_tiny_ip_adapter, make_tiny_model

SIZE, SEED = 64, 7
WEIGHTS = "ip-adapter_test.safetensors"


def components(model_dir):
    return load_components(ModelSpec(str(model_dir), tiny_vae=str(model_dir / "taesd"), local_files_only=True))


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-ip"), "sdxl")


@pytest.fixture(scope="module")
def adapters(tiny_sd15_dir, sdxl_dir, tmp_path_factory):
    """Weight files in the h94 layout (<repo>/models/<file> + <repo>/models/image_encoder/) per family."""
    root = tmp_path_factory.mktemp("ip-adapters")
    return {"sd15": make_tiny_ip_adapter(tiny_sd15_dir, root / "sd15" / "models" / WEIGHTS, seed=1),
            "sd15b": make_tiny_ip_adapter(tiny_sd15_dir, root / "sd15b" / "models" / WEIGHTS, seed=2),
            "sdxl": make_tiny_ip_adapter(sdxl_dir, root / "sdxl" / "models" / WEIGHTS, seed=3),
            "sd15plus": make_tiny_ip_adapter(tiny_sd15_dir, root / "plus" / "models" / WEIGHTS, seed=4, kind="plus")}


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    """Two style images on disk (not square: the CLIP preprocessing resizes and crops)."""
    root = tmp_path_factory.mktemp("styles")
    paths = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:40, 0:56] / 40
        img = np.stack([np.sin(7 * xx + seed), np.cos(3 * yy * seed), np.sin(5 * (xx - yy))], -1)
        img = np.clip(127.5 * (img + 1) + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        paths.append(root / f"style{seed}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def frame(seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    base = np.stack([np.sin(6 * xx + seed), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1)
    return np.clip(127.5 * (base + 1) + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def config(**kw) -> StreamConfig:
    base = dict(width=SIZE, height=SIZE, t_index_list=(25,), cfg_type="full", guidance_scale=3.0, seed=SEED,
                prompt="the cat", negative_prompt="an ant")
    return StreamConfig(**{**base, **kw})


def reference(model_dir, comp, weights, style, scale, image):
    """diffusers' img2img pipeline (LCM, 2 steps at strength 0.5 = one step at t=499) on its OWN copy of the
    UNet (load_ip_adapter changes the UNet it is given), with load_ip_adapter + set_ip_adapter_scale."""
    unet = UNet2DConditionModel.from_pretrained(str(model_dir), subfolder="unet")
    common = dict(vae=comp.vae, text_encoder=comp.text_encoder, tokenizer=comp.tokenizer, unet=unet,
                  scheduler=LCMScheduler.from_config(comp.scheduler.config), image_encoder=None, feature_extractor=None)
    if comp.family == "sdxl":
        pipe = StableDiffusionXLImg2ImgPipeline(text_encoder_2=comp.text_encoder_2, tokenizer_2=comp.tokenizer_2,
                                                requires_aesthetics_score=False, **common)
    else:
        pipe = StableDiffusionImg2ImgPipeline(safety_checker=None, requires_safety_checker=False, **common)
    pipe.load_ip_adapter(str(weights.parent.parent), subfolder="models", weight_name=weights.name,
                         local_files_only=True)
    pipe.set_ip_adapter_scale(scale)
    steps = []
    out = pipe("the cat", image=image.astype(np.float32)[None] / 255.0, ip_adapter_image=Image.open(style),
               strength=0.5, num_inference_steps=2, guidance_scale=3.0, negative_prompt="an ant",
               generator=torch.Generator().manual_seed(SEED), output_type="np",
               callback_on_step_end=lambda p, i, t, kw: steps.append(int(t)) or kw).images[0]
    assert steps == [499]
    return out


@pytest.mark.parametrize("name, kind", [("sd15", "plain"), ("sdxl", "plain"), ("sd15plus", "plus")])
def test_one_step_with_an_ip_adapter_equals_diffusers_img2img_pipeline(name, kind, tiny_sd15_dir, sdxl_dir, adapters,
                                                                       styles):
    model_dir = sdxl_dir if name == "sdxl" else tiny_sd15_dir
    comp = components(model_dir)
    image = frame()
    plain = StreamDiffusion(comp, config())(image).astype(np.float32) / 255.0
    adapter = load_ip_adapter(str(adapters[name]), comp, scale=0.7, local_files_only=True)
    assert adapter.kind == kind
    adapter.set_image(str(styles[0]))
    stream = StreamDiffusion(comp, config())
    stream.set_ip_adapter(adapter)
    got = stream(image).astype(np.float32) / 255.0
    want = reference(model_dir, comp, adapters[name], styles[0], 0.7, image)
    assert np.abs(got - want).max() <= 0.6 / 255.0
    assert np.abs(plain - want).max() > 5 / 255.0  # the adapter really steers the image
    stream.set_ip_adapter(None)
    assert np.array_equal(stream(image), (plain * 255).round().astype(np.uint8))  # detached: the plain stream again


@pytest.fixture()
def sd15(tiny_sd15_dir):
    return components(tiny_sd15_dir)  # a fresh copy per test: attaching changes the UNet


def test_scale_and_image_are_live_and_keep_the_structure(sd15, adapters, styles):
    image = frame()
    plain_stream = StreamDiffusion(sd15, config(cfg_type="self", guidance_scale=1.2))
    plain = plain_stream(image)
    adapter = load_ip_adapter(str(adapters["sd15"]), sd15, scale=0.0, local_files_only=True)
    adapter.set_image(str(styles[0]))
    stream = StreamDiffusion(sd15, config(cfg_type="self", guidance_scale=1.2))
    key = stream.shape_key
    stream.set_ip_adapter(adapter)
    attached = stream.shape_key
    assert attached != key and "image_embeds" in stream.unet_cond and stream.conditions[-1].name == "image_embeds"
    assert np.array_equal(stream(image), plain)  # scale 0: exactly no adapter
    rows, scale = stream.unet_cond["image_embeds"].data_ptr(), adapter.scale_tensor.data_ptr()
    adapter.set_scale(0.5)
    half = stream(image)
    adapter.set_scale(1.0)
    full = stream(image)
    base = plain.astype(int)
    assert 0 < np.abs(half.astype(int) - base).mean() < np.abs(full.astype(int) - base).mean()
    assert stream.ip_image_pending is False
    adapter.set_image(str(styles[1]))
    assert stream.ip_image_pending is True
    other = stream(image)  # the next frame shows the new image
    assert np.abs(other.astype(int) - full.astype(int)).max() > 0
    adapter.set_image(adapter.encode_image(str(styles[0])))  # embeddings from a background encode
    assert np.array_equal(stream(image), full)
    assert stream.shape_key == attached  # neither the scale nor the image changes the structure
    assert stream.unet_cond["image_embeds"].data_ptr() == rows and adapter.scale_tensor.data_ptr() == scale
    stream.update(guidance_scale=1.5, cfg_type="full")  # reallocated rows get the image again
    assert stream.unet_cond["image_embeds"].shape[0] == 2 and stream.unet_cond["image_embeds"][0].abs().max() == 0
    torch.testing.assert_close(stream.unet_cond["image_embeds"][1:], adapter.image_embeds)


def test_the_similarity_filter_does_not_skip_the_frame_after_a_new_image(sd15, adapters, styles):
    adapter = load_ip_adapter(str(adapters["sd15"]), sd15, local_files_only=True)
    adapter.set_image(str(styles[0]))
    stream = StreamDiffusion(sd15, config(cfg_type="none", similarity_threshold=0.5, similarity_max_skip=100))
    stream.set_ip_adapter(adapter)
    image = frame()
    first = stream(image)
    stream(image)
    assert stream.frames_skipped == 1
    adapter.set_image(str(styles[1]))
    assert not np.array_equal(stream(image), first) and stream.frames_skipped == 1


def test_attach_and_detach_swap_adapters_and_restore_the_unet(sd15, adapters, styles):
    unet = sd15.unet
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    inputs = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([499, 199]),
              torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        plain = EagerUNet(unet)(*inputs)
    a = load_ip_adapter(str(adapters["sd15plus"]), sd15, local_files_only=True)
    assert unet.encoder_hid_proj is None  # loading touches nothing
    stream = StreamDiffusion(sd15, config())
    stream.set_ip_adapter(a)
    key_a = stream.shape_key
    assert sum(isinstance(p, IPAttnProcessor) for p in unet.attn_processors.values()) == 4
    assert stream.unet_cond["image_embeds"].shape == (2, 1, 17, 32)  # Plus: the encoder's hidden states
    b = load_ip_adapter(str(adapters["sd15b"]), sd15, local_files_only=True)  # loaded while another is attached
    stream(frame())
    stream.set_ip_adapter(b)
    assert stream.unet_cond["image_embeds"].shape == (2, 1, 32)
    stream(frame())
    assert stream.shape_key != key_a and not a.attached and b.attached
    stream.set_ip_adapter(None)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert "image_embeds" not in stream.unet_cond and stream.conditions == ()
    with torch.no_grad():
        torch.testing.assert_close(EagerUNet(unet)(*inputs), plain, atol=0, rtol=0)
    stream.set_ip_adapter(a)  # the same adapter again reads a new image_embeds tensor: a graph kept for
    assert stream.shape_key != key_a  # its first attach must not replay (it would read the freed one)
    stream.set_ip_adapter(None)


def test_a_scale_change_needs_no_recompilation(sd15, adapters, styles):
    """torch.compile reads the scale tensor at run time: no guard on its value, no recompile; a swapped
    adapter is followed."""
    import torch._dynamo

    adapter = load_ip_adapter(str(adapters["sd15"]), sd15, scale=0.3, local_files_only=True)
    adapter.set_image(str(styles[0]))
    adapter.attach()
    unet = EagerUNet(sd15.unet)
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([499]), torch.randn(1, 77, 768))
    cond = {"image_embeds": adapter.image_embeds}
    torch._dynamo.reset()
    compiled = torch.compile(unet.__call__, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs, **cond), unet(*inputs, **cond))
        frames = torch._dynamo.utils.counters["frames"]["ok"]
        assert frames > 0
        adapter.set_scale(0.9)
        torch.testing.assert_close(compiled(*inputs, **cond), unet(*inputs, **cond))
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames
    adapter.detach()  # another adapter of the same shapes: the compiled call follows the swap
    other = load_ip_adapter(str(adapters["sd15b"]), sd15, scale=0.9, local_files_only=True)
    other.set_image(str(styles[1]))
    other.attach()
    cond = {"image_embeds": other.image_embeds}
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs, **cond), unet(*inputs, **cond))
    other.detach()
    torch._dynamo.reset()


def test_a_style_file_that_is_not_an_image_is_one_clear_error_and_changes_nothing(sd15, adapters, styles, tmp_path):
    adapter = load_ip_adapter(str(adapters["sd15"]), sd15, local_files_only=True)
    adapter.set_image(str(styles[0]))
    embeds, version = adapter.image_embeds.clone(), adapter.image_version
    fake = tmp_path / "style.png"
    fake.write_text("not a picture")
    cases = [(str(fake), "not an image file"), (str(tmp_path / "missing.jpg"), "no such file"),
             (np.zeros((4, 4), np.uint8), "uint8 HxWx3"), (torch.zeros(1, 1, 5), "embeddings of shape"),
             (3, "image file path")]
    for bad, needle in cases:
        with pytest.raises(IPAdapterError, match=needle) as info:
            adapter.set_image(bad)
        assert len(str(info.value).splitlines()) == 1
        assert isinstance(info.value, ValueError)
    assert str(fake) in str(pytest.raises(IPAdapterError, adapter.set_image, str(fake)).value)
    assert torch.equal(adapter.image_embeds, embeds) and adapter.image_version == version
    for bad in (float("nan"), "strong", True):
        with pytest.raises(IPAdapterError, match="finite number"):
            adapter.set_scale(bad)
    assert adapter.scale == 1.0


@pytest.mark.parametrize("family, label, model", [("sdxl", "SDXL", "SD 1.5")])
def test_an_ip_adapter_of_another_family_is_one_clear_error(sd15, adapters, family, label, model):
    unet_before = dict(sd15.unet.attn_processors)
    with pytest.raises(IPAdapterError) as info:
        load_ip_adapter(str(adapters[family]), sd15, local_files_only=True)
    message = str(info.value)
    assert str(adapters[family]) in message and f"an {label} IP-Adapter" in message
    assert f"loaded model is {model}" in message and len(message.splitlines()) == 1
    assert isinstance(info.value, ModelLoadError) and isinstance(info.value, ValueError)
    assert dict(sd15.unet.attn_processors) == unet_before and sd15.unet.encoder_hid_proj is None


def test_an_sd15_ip_adapter_on_sd21_names_the_missing_sd21_adapters(tiny_model_dir, adapters):
    comp = components(tiny_model_dir)
    with pytest.raises(IPAdapterError, match=r"an SD 1\.5 IP-Adapter .* loaded model is SD 2\.1 .*none for SD 2\.1"):
        load_ip_adapter(str(adapters["sd15"]), comp, local_files_only=True)


def test_missing_or_wrong_files_name_the_thing(sd15, adapters, tmp_path):
    folder = adapters["sd15"].parent
    not_ip = tmp_path / "weights.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(not_ip))
    text = tmp_path / "adapter.txt"
    text.write_text("x")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.safetensors", "b.bin"):
        (two / name).write_bytes(b"")
    faceid = tmp_path / "faceid" / "ip-adapter-faceid.safetensors"
    faceid.parent.mkdir()
    state = ip_adapter_state(sd15.unet, 32)
    state = {k.replace("image_proj.proj.", "image_proj.proj.0."): v for k, v in state.items()}
    save_file(state, str(faceid))
    lonely = tmp_path / "lonely" / WEIGHTS
    lonely.parent.mkdir()
    lonely.write_bytes(adapters["sd15"].read_bytes())
    cases = [
        ("/no/such/ip-adapter.safetensors", {}, "no such file or folder"),
        ("styles/ip-adapter.safetensors", {}, "no such file or folder"),
        (str(text), {}, ".safetensors or .bin"),
        (str(not_ip), {}, "holds no IP-Adapter weights"),
        (str(two), {}, "say which weight file"),
        (str(folder), {"weight_name": "nope.safetensors"}, "has no 'nope.safetensors'"),
        (str(faceid), {}, "FaceID"),
        (str(lonely), {}, "image encoder .* no such folder"),
        (str(adapters["sd15"]), {"image_encoder": str(tmp_path / "none")}, "no such folder"),
        (str(adapters["sd15"]), {"image_encoder": str(tmp_path)}, "not a CLIP image encoder folder"),
        ("h94/IP-Adapter", {}, "name the weight file"),
        ("h94/IP-Adapter/models/ip-adapter_sd15.safetensors", {}, "not in the local Hugging Face cache"),
    ]
    for source, kwargs, needle in cases:
        with pytest.raises(IPAdapterError, match=needle) as info:
            load_ip_adapter(source, sd15, local_files_only=True, **kwargs)
        assert len(str(info.value).splitlines()) == 1, str(info.value)
    assert sd15.unet.encoder_hid_proj is None
    adapter = load_ip_adapter(str(folder), sd15, weight_name=WEIGHTS, local_files_only=True)  # folder + weight name
    assert adapter.kind == "plain"
    from safetensors.torch import load_file

    from dreamcam.core.ip_adapter import nest_state

    torch.save(nest_state(load_file(str(adapters["sd15"]))), tmp_path / "ip-adapter.bin")  # the .bin layout
    adapter = load_ip_adapter(str(tmp_path / "ip-adapter.bin"), sd15, image_encoder=str(folder / "image_encoder"),
                              local_files_only=True)
    assert adapter.kind == "plain"


def test_an_image_encoder_of_another_width_is_refused(sd15, adapters, tmp_path):
    from transformers import CLIPVisionModelWithProjection

    from dreamcam.core.tiny import image_encoder_config

    CLIPVisionModelWithProjection(image_encoder_config(projection_dim=16)).save_pretrained(tmp_path / "enc")
    with pytest.raises(IPAdapterError, match="16-wide projected embeddings, the IP-Adapter takes 32"):
        load_ip_adapter(str(adapters["sd15"]), sd15, image_encoder=str(tmp_path / "enc"), local_files_only=True)
