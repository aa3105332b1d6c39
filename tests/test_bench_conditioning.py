"""The code paths of the flicker and LoRA-cost benchmarks (bench/flicker.py, bench/loras.py) on the
CPU with the small random bench models (no timing asserts: the numbers come from the GPU run)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench import flicker as fl
from bench.models import build, components


@pytest.fixture(scope="module")
def bench_parts():
    from dreamcam.core.modules import eager_modules

    comps = components(build("cpu", torch.float32, small=True), "cpu", torch.float32)
    return comps, eager_modules(comps)


def test_camera_frames_are_the_scene_plus_sensor_noise():
    base = fl.static_scene(64, 48)
    assert base.shape == (48, 64, 3) and 20 <= base.min() and base.max() <= 235
    frames = fl.camera_frames(base, fl.CameraNoise(sigma=3.0, pool=8))
    assert len(frames) == 8 and frames[0].dtype == np.uint8 and frames[0].shape == (48, 64, 3)
    noise = np.stack(frames).astype(np.float64) - base
    assert abs(noise.std() - math.hypot(3.0, 1 / math.sqrt(12))) < 0.1  # sensor noise + rounding
    # two frames of independent noise of sigma s differ by 2 s / sqrt(pi) on average
    assert abs(fl.flicker(frames) - 2 * 3.0 / math.sqrt(math.pi)) < 0.2
    shifted = fl.camera_frames(base, fl.CameraNoise(sigma=0.0, shift_px=0.5, pool=2))
    assert not np.array_equal(shifted[0], shifted[1])
    with pytest.raises(ValueError, match="shift_px"):
        fl.camera_frames(base, fl.CameraNoise(shift_px=1.5))


def test_flicker_run_gives_a_row_per_setting(bench_parts):
    comps, modules = bench_parts
    result = fl.run_flicker(comps, modules, size=64, warmup=2, frames=3, settings=((0.0, 0.0), (0.5, 0.0), (0.0, 0.5)))
    rows = result["rows"]
    assert [r["setting"] for r in rows] == ["input (camera noise)", "latent 0, image 0", "latent 0.5, image 0",
                                           "latent 0, image 0.5"]
    for r in rows[1:]:
        assert r["fps"] > 0 and r["flicker"] >= 0 and math.isfinite(r["latent_flicker"])
    assert rows[1]["latent_flicker_share"] == rows[1]["image_flicker_share"] == 1.0
    assert rows[1]["latent_flicker"] > 0 and rows[1]["image_flicker"] > 0  # the tap kept every frame
    text = "\n".join(fl.report_lines(result))
    assert "| setting | flicker (uint8) |" in text and "| latent 0.5, image 0 |" in text


def test_lora_cost_run_measures_live_and_fused(bench_parts, tmp_path):
    from bench import loras

    comps, modules = bench_parts
    assert loras.parse_cases("1:16, 4:64") == [(1, 16), (4, 64)]
    with pytest.raises(ValueError, match="N:RANK"):
        loras.parse_cases("2x16")
    plain = [p.detach().clone() for p in comps.unet.parameters()]
    linear = sum(1 for n, m in comps.unet.named_modules() if isinstance(m, torch.nn.Linear)
                 and any(n.endswith("." + t) for t in loras.TARGETS))
    # two cases: the second saves its files while the first one's adapters were attached and cleared
    result = loras.run_loras(comps, modules, [(1, 4), (2, 4)], folder=tmp_path, frames=2, size=64, log=lambda *_: None)
    row = result["rows"][0]
    assert "error" not in row and "error" not in result["rows"][1], result["rows"]
    assert row["layers"] == linear > 0  # every target layer adapted
    assert not row["live"]["recaptured"] and not row["fused"]["recaptured"]
    assert row["live"]["set_weights_ms"] >= 0 and row["fused"]["fps"] > 0
    assert all(torch.equal(a, b) for a, b in zip(plain, comps.unet.parameters()))  # the UNet is left as it was
    assert "| 1 x 4 |" in "\n".join(loras.report_lines(result))


def test_the_bench_depth_model_is_built_once_and_served_again():
    # cn-two after cn-depth asks for it a second time (on the H200 that call raised UnboundLocalError)
    import torch

    from bench.models import depth_model

    first, second = depth_model("cpu", torch.float32, side=28), depth_model("cpu", torch.float32, side=56)
    assert first.model is second.model
    assert (first.settings.height, second.settings.height) == (28, 56)
