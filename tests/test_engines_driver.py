"""The one graph driver (`engines.driver.StreamDriver`): the core's prepare/finish split around the step.

On the CPU the step runs uncaptured (no CUDA graphs), which checks the bookkeeping: results in
submit order equal the plain stream's, the similarity filter's repeats, live updates. The GPU
overlap itself is checked by tests/test_engines_gpu.py and tests/test_plugin_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.engines.driver import StreamDriver


@pytest.fixture(scope="module")
def comps(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


def _cfg(**kw) -> StreamConfig:
    base = dict(width=64, height=64, t_index_list=(30,), cfg_type="none", seed=2, prompt="a fox")
    base.update(kw)
    return StreamConfig(**base)


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_results_in_submit_order_equal_the_plain_stream(comps):
    frames = _frames(5)
    plain = StreamDiffusion(comps, _cfg())
    want = [plain(f) for f in frames]
    flight = StreamDriver(StreamDiffusion(comps, _cfg()), lanes=3)
    pending = [flight.submit(f) for f in frames[:3]]
    got = [p.result() for p in pending] + [flight(f) for f in frames[3:]]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert flight.lanes == 3 and flight.stream.frames_processed == 5


def test_a_frame_skipped_by_the_similarity_filter_repeats_the_last_output(comps):
    flight = StreamDriver(StreamDiffusion(comps, _cfg(similarity_threshold=0.5, similarity_max_skip=10)), lanes=2)
    frame = _frames(1)[0]
    first = flight.submit(frame).result()
    second = flight.submit(frame.copy()).result()  # identical input: skipped
    np.testing.assert_array_equal(first, second)
    assert flight.stream.frames_skipped == 1 and flight.stream.frames_processed == 1


def test_updates_apply_between_frames_in_flight(comps):
    flight = StreamDriver(StreamDiffusion(comps, _cfg()), lanes=2)
    frames = _frames(3)
    flight(frames[0])
    flight.update(prompt="a wolf", t_index_list=[20, 35])  # 2 steps: stateful, one lane
    out = flight(frames[1])
    reference = StreamDiffusion(comps, _cfg(prompt="a wolf", t_index_list=(20, 35)))
    assert flight.stream.config.prompt == "a wolf" and flight.stream.num_steps == 2
    assert not flight.stream.stateless and out.shape == reference(frames[1]).shape
