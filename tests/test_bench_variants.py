"""bench.run's comparison of engine variants (issue 11): differences against the baseline's output
frames, the report's comparison table, and the compile deadline that the engine fallback cannot swallow."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bench.report import render, variant_rows
from bench.run import BASELINE, VARIANTS, add_differences
from bench.timing import VariantTimeout, deadline


def _scenario(fps: float) -> dict:
    stats = {"frames": 10, "fps": fps, "p50_ms": 1000 / fps, "p99_ms": 1000 / fps, "mean_ms": 1000 / fps}
    return {"device": stats, "host_to_host": stats, "stages_ms": {"encode": 0.7, "unet": 4.4, "decode": 0.7},
            "top_kernels": [["TOTAL", 5500.0, 889.0]], "capture_s": 7.0}


def _results() -> dict:
    return {"variants": [
        {"key": BASELINE, "variant": VARIANTS[BASELINE].label, "engine_s": 60.0,
         "scenarios": {"speed-1step-512": _scenario(160.0)}},
        {"key": "compiled-fp8", "variant": VARIANTS["compiled-fp8"].label, "engine_s": 70.0,
         "scenarios": {"speed-1step-512": _scenario(200.0)}},
        {"key": "compiled-autotune", "variant": VARIANTS["compiled-autotune"].label,
         "error": "engine build did not finish within 150 s (compile timeout)"},
    ]}


def test_differences_against_the_baseline_frames():
    results = _results()
    base = np.full((4, 8, 8, 3), 100, dtype=np.uint8)
    other = base.copy()
    other[1, 0, 0, 0] = 110  # one pixel of one frame off by 10
    outputs = {BASELINE: {"speed-1step-512": base}, "compiled-fp8": {"speed-1step-512": other}}
    add_differences(results, outputs)
    diff = results["variants"][1]["scenarios"]["speed-1step-512"]["diff_vs_baseline"]
    assert diff["max_abs"] == 10 and diff["frames"] == 4
    assert diff["mean_abs"] == pytest.approx(10 / (4 * 8 * 8 * 3), abs=1e-3)
    assert diff["per_frame_mean_abs"][0] == 0 and diff["per_frame_mean_abs"][1] > 0
    assert "diff_vs_baseline" not in results["variants"][0]["scenarios"]["speed-1step-512"]


def test_report_compares_each_variant_with_the_baseline():
    results = _results()
    results["variants"][1]["scenarios"]["speed-1step-512"]["diff_vs_baseline"] = {"mean_abs": 0.5, "max_abs": 12}
    rows = variant_rows(results)
    fp8 = next(r for r in rows if r.startswith("| compiled-fp8 "))
    assert "| 200.0 | 1.25x |" in fp8 and "| 0.500 | 12 |" in fp8 and "| 889.0 |" in fp8
    assert any("compile timeout" in r for r in rows)
    assert "Engine variants against the plain compiled engine" in render(results)


def test_deadline_interrupts_and_is_not_an_exception():
    caught_as_exception = False
    with pytest.raises(VariantTimeout):
        with deadline(0.2):
            try:
                time.sleep(5)
            except Exception:  # noqa: BLE001 - what the engine factory's fallback chain does
                caught_as_exception = True
    assert not caught_as_exception
    with deadline(5):  # finished in time: nothing raised, the timer is cleared
        pass
    time.sleep(0.01)


def test_every_issue_11_variant_is_a_compiled_engine_option():
    from dreamcam.engines import EngineConfig

    for key in ("compiled-autotune", "compiled-autotune-cd", "compiled-cl", "compiled-gnsilu", "compiled-fp8",
                "compiled-aot", "compiled-heuristic", "compiled-combo"):
        v = VARIANTS[key]
        assert v.engine == "compiled"
        EngineConfig(**v.options)  # valid options
