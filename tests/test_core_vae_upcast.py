"""Proof: an SDXL full VAE whose config asks for `force_upcast` runs in float32 behind a float16
stream (as diffusers' SDXL pipelines do), so large activations do not overflow into NaN frames,
while the UNet, the text encoders and every other VAE keep the stream's precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components, vae_compute_dtype
from dreamcam.core.modules import eager_modules
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_model


def _set_force_upcast(folder, value: bool) -> None:
    path = folder / "vae" / "config.json"
    config = json.loads(path.read_text())
    config["force_upcast"] = value
    path.write_text(json.dumps(config))


@torch.no_grad()
def _make_decoder_overflow_in_fp16(folder) -> None:
    """Scale the decoder's first conv so its activations exceed float16's range (65504) while the
    following group norms bring them back: fine in float32, inf/NaN in float16, like the real SDXL VAE."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae")
    vae.decoder.conv_in.weight.mul_(1e5)
    vae.decoder.conv_in.bias.mul_(1e5)
    vae.save_pretrained(folder / "vae")


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-upcast"), "sdxl")
    _set_force_upcast(folder, True)
    _make_decoder_overflow_in_fp16(folder)
    return folder


def test_sdxl_full_vae_runs_in_float32_behind_a_float16_stream(tiny_sdxl_dir):
    comp = load_components(ModelSpec(str(tiny_sdxl_dir), tiny_vae=None, dtype="float16", local_files_only=True))
    assert comp.dtype == torch.float16 and comp.vae_dtype == torch.float32
    assert {p.dtype for p in comp.vae.parameters()} == {torch.float32}
    for part in (comp.unet, comp.text_encoder, comp.text_encoder_2):
        assert {p.dtype for p in part.parameters()} == {torch.float16}
    modules = eager_modules(comp)
    images = torch.rand(1, 3, 64, 64).mul(2).sub(1).to(torch.float16)
    with torch.no_grad():
        latents = modules.encode(images)
        decoded = modules.decode(latents)
    assert latents.dtype == decoded.dtype == torch.float16  # the stream's contract: its dtype in and out
    assert torch.isfinite(decoded).all()
    stream = StreamDiffusion(comp, StreamConfig(width=64, height=64, t_index_list=(20, 40), cfg_type="full",
                                                prompt="the cat"))
    out = stream(np.full((64, 64, 3), 100, dtype=np.uint8))
    assert out.shape == (64, 64, 3) and out.std() > 1  # a picture, not a black (NaN) frame


def test_the_same_vae_in_float16_overflows(tiny_sdxl_dir):
    """The failure the upcast prevents: this VAE decodes to NaN when it runs in float16."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sdxl_dir / "vae").to(torch.float16)
    with torch.no_grad():
        decoded = vae.decode(torch.randn(1, 4, 8, 8, dtype=torch.float16), return_dict=False)[0]
    assert not torch.isfinite(decoded).all()


def test_upcast_only_for_a_float16_sdxl_full_vae_that_asks_for_it(tiny_sdxl_dir):
    up, half = {"force_upcast": True}, torch.float16
    assert vae_compute_dtype("sdxl", "full", up, half) == torch.float32
    assert vae_compute_dtype("sdxl", "full", {"force_upcast": False}, half) == half
    assert vae_compute_dtype("sdxl", "full", {}, half) == half
    assert vae_compute_dtype("sdxl", "tiny", up, half) == half  # TAESD is fine in float16
    assert vae_compute_dtype("sdxl", "full", up, torch.bfloat16) == torch.bfloat16  # bf16 has float32's range
    assert vae_compute_dtype("sdxl", "full", up, torch.float32) == torch.float32
    # AutoencoderKL's default is force_upcast=True, so SD 1.5 / 2.1 configs carry it without needing it
    assert vae_compute_dtype("sd21", "full", up, half) == half
    assert vae_compute_dtype("sd15", "full", up, half) == half
    comp = load_components(ModelSpec(str(tiny_sdxl_dir), tiny_vae=str(tiny_sdxl_dir / "taesd"), dtype="float16",
                                     local_files_only=True))
    assert comp.vae_kind == "tiny" and comp.vae_dtype == torch.float16
    assert {p.dtype for p in comp.vae.parameters()} == {torch.float16}


def test_the_eager_engine_keeps_the_upcast_vae(tiny_sdxl_dir, tmp_path):
    from dreamcam.engines import EngineConfig, create_engine

    comp = load_components(ModelSpec(str(tiny_sdxl_dir), tiny_vae=None, dtype="float16", local_files_only=True))
    engine = create_engine("eager", comp, EngineConfig(cache_dir=tmp_path, probe=False))
    assert {p.dtype for p in comp.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in comp.unet.parameters()} == {torch.float16}
    images = torch.rand(1, 3, 64, 64).mul(2).sub(1).to(torch.float16)
    with torch.no_grad():
        decoded = engine.modules.decode(engine.modules.encode(images))
    assert decoded.dtype == torch.float16 and torch.isfinite(decoded).all()
