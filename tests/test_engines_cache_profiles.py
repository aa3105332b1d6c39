"""Engine cache keys and dynamic-shape profiles: what makes a built engine stale, which sizes fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dreamcam.engines.cache import EngineKey, engine_dir, lora_set, model_fingerprint
from dreamcam.engines.profiles import choose_profile


def test_profile_for_512_is_256_to_1024_optimised_at_the_configured_size():
    p = choose_profile(512, 512, 1)
    assert (p.min_side, p.max_side, p.opt_height, p.opt_width) == (256, 1024, 512, 512)
    assert p.latent_shapes() == ((1, 4, 32, 32), (1, 4, 64, 64), (1, 4, 128, 128))
    assert p.image_shapes() == ((1, 3, 256, 256), (1, 3, 512, 512), (1, 3, 1024, 1024))


def test_profile_keeps_sizes_that_are_not_multiples_of_64_as_the_optimum():
    p = choose_profile(432, 768, 2)
    assert (p.min_side, p.max_side) == (256, 1024)
    assert p.latent_shapes()[1] == (2, 4, 54, 96)
    assert p.contains(432, 768, 2) and not p.contains(432, 768, 3)


def test_profile_widens_to_include_a_large_or_small_configured_size():
    big = choose_profile(720, 1280, 1)
    assert big.max_side == 1280 and big.min_side == 256 and big.max_side % 64 == 0
    small = choose_profile(128, 192, 1)
    assert small.min_side == 128 and small.contains(128, 192, 1)


def test_profile_batch_range_and_bad_sizes():
    p = choose_profile(512, 512, 2, max_batch=4)
    assert p.batch_shapes(77, 1024) == ((2, 77, 1024), (2, 77, 1024), (4, 77, 1024))
    with pytest.raises(ValueError, match="multiple of 8"):
        choose_profile(500, 512, 1)


def _key(**changes) -> EngineKey:
    base = EngineKey(part="unet", model_hash="abc123", lora_set=lora_set([("lcm", 1.0)]),
                     profile=choose_profile(512, 512, 1), precision="fp16",
                     backend_version="tensorrt-10.7.0", compute_capability="9.0")
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize("change", [
    {"model_hash": "abc124"},
    {"lora_set": lora_set([("lcm", 0.5)])},
    {"lora_set": ()},
    {"profile": choose_profile(768, 512, 1)},
    {"profile": choose_profile(512, 512, 2)},
    {"backend_version": "tensorrt-10.8.0"},
    {"compute_capability": "8.9"},
    {"precision": "fp32"},
    {"part": "vae_decoder"},
])
def test_every_input_of_a_build_changes_the_key(change, tmp_path):
    assert _key(**change).digest() != _key().digest()
    assert engine_dir(tmp_path, _key(**change)) != engine_dir(tmp_path, _key())


def test_key_is_stable_and_lora_order_does_not_matter(tmp_path):
    a = _key(lora_set=lora_set([("a", 1.0), ("b", 0.5)]))
    b = _key(lora_set=lora_set([("b", 0.5), ("a", 1)]))
    assert a.digest() == b.digest()
    name = engine_dir(tmp_path, a).name
    assert name.startswith("unet--abc123--256-1024px-opt512x512-b1-1--tensorrt-10.7.0--sm90--")


def test_model_fingerprint_follows_the_weights():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    first = model_fingerprint(m)
    assert model_fingerprint(m) == first
    with torch.no_grad():
        m[0].weight[3, 3] += 0.5  # a change in the middle of a tensor (a fused LoRA changes sums)
    assert model_fingerprint(m) != first


def test_the_tensorrt_profile_refuses_a_live_size_or_batch_outside_it_and_the_stream_keeps_its_own(tiny_components):
    """The TensorRT modules' `fits` (no GPU needed to ask): the stream refuses a live size outside the
    engine's sides and a steps or guidance change outside its UNet batch, and keeps serving its own."""
    import numpy as np

    from dreamcam.core.config import StreamConfig
    from dreamcam.core.modules import eager_modules
    from dreamcam.core.stream import StreamDiffusion
    from dreamcam.engines.config import EngineConfig, Geometry
    from dreamcam.engines.tensorrt import profile_fits

    fits = profile_fits(EngineConfig(geometry=Geometry(64, 64, unet_batch=1), trt_min_side=64, trt_max_side=128))
    assert fits(64, 128, 1) == fits(128, 64, 1) == ""
    assert "sides from 64 to 128 (its optimisation profile), got 136x64" in fits(64, 136, 1)
    assert "got 64x56" in fits(56, 64, 1)
    assert "UNet batch of 1" in fits(64, 64, 2) and "needs 2" in fits(64, 64, 2)
    modules = dataclasses.replace(eager_modules(tiny_components), fits=fits)
    stream = StreamDiffusion(tiny_components, StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none"),
                             modules=modules)
    frame = np.zeros((64, 64, 3), np.uint8)
    stream(frame)
    with pytest.raises(ValueError, match="^width: the TensorRT engine takes sizes with sides from 64 to 128"):
        stream.update(width=256)
    with pytest.raises(ValueError, match="^steps: the TensorRT engine was built for a UNet batch of 1"):
        stream.update(t_index_list=None, steps=2)
    with pytest.raises(ValueError, match="^cfg_type: "):
        stream.update(cfg_type="full")
    assert (stream.config.width, stream.config.num_steps, stream.config.cfg_type) == (64, 1, "none")
    assert stream(frame).shape == (64, 64, 3)
    stream.update(width=128)
    assert stream(frame).shape == (64, 128, 3)
