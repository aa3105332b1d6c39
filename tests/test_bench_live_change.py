"""bench/live_change.py: the numbers it reports from the frames' times, and its changes are real live changes."""

from __future__ import annotations

import pytest

from bench.live_change import CHANGES, Timeline
from bench.scenarios import SCENARIOS
from dreamcam.engines import EngineConfig


def test_gaps_and_rates_come_from_the_frames_of_each_phase() -> None:
    line = Timeline([], [])
    for t, phase in ((0.00, "before"), (0.01, "before"), (0.02, "before"), (1.02, "during"), (1.52, "during"),
                     (1.53, "after"), (1.54, "after")):
        line.times.append(t)
        line.phases.append(phase)
    assert line.gaps_ms(0, 3) == {"p50": 10.0, "max": 10.0}  # steady before the change
    assert line.gaps_ms(2)["max"] == 1000.0  # the stall after it
    assert line.fps("before") == 100.0 and line.fps("during") == 2.0 and line.fps("after") == 100.0
    assert line.fps("missing") is None and line.gaps_ms(6) == {"p50": 0.0, "max": 0.0}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_each_change_is_a_valid_live_update_of_new_shapes(name: str) -> None:
    config = SCENARIOS["img2img-1step-512"].stream_config()
    changed = config.replace(**CHANGES[name].settings(512))
    assert (changed.width, changed.height, changed.num_steps) != (config.width, config.height, config.num_steps)
    EngineConfig(**dict(CHANGES[name].options))  # options the engine takes
