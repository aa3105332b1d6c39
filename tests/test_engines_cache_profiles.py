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
