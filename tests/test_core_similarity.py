"""Proof: the stochastic similarity filter skips what it should, never too long, and costs nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.modules import StepModules, eager_modules
from dreamcam.core.similarity import SimilarityFilter
from dreamcam.core.stream import StreamDiffusion


@pytest.fixture(scope="module")
def comp(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


def counting(comp):
    mods, counts = eager_modules(comp), {"unet": 0, "encode": 0, "decode": 0}

    def wrap(name, fn):
        def call(*args):
            counts[name] += 1
            return fn(*args)
        return call

    return StepModules(*(wrap(k, getattr(mods, k)) for k in ("unet", "encode", "decode"))), counts


def make_stream(comp, threshold, max_skip):
    mods, counts = counting(comp)
    config = StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none",
                          similarity_threshold=threshold, similarity_max_skip=max_skip)
    return StreamDiffusion(comp, config, modules=mods), counts


def frame(seed):
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_identical_frames_skip_up_to_max_skip_and_cost_no_model_work(comp):
    stream, counts = make_stream(comp, threshold=0.9, max_skip=3)
    same = frame(0)
    outs = [stream(same) for _ in range(12)]
    # processed: 0, 4, 8 (each after exactly 3 skips); every skip returns the last output
    assert counts == {"unet": 3, "encode": 3, "decode": 3}
    assert stream.frames_processed == 3 and stream.frames_skipped == 9
    for i in (1, 2, 3, 5, 6, 7, 9, 10, 11):
        assert np.array_equal(outs[i], outs[i - 1])


def test_identical_frames_without_limit_are_always_skipped(comp):
    stream, counts = make_stream(comp, threshold=0.5, max_skip=None)
    same = frame(1)
    for _ in range(20):
        stream(same)
    assert counts["unet"] == 1 and stream.frames_skipped == 19


def test_different_frames_always_run(comp):
    stream, counts = make_stream(comp, threshold=0.9, max_skip=10)
    a = frame(2)
    b = 255 - a  # centred cosine similarity of a and b is -1
    for i in range(10):
        stream(a if i % 2 else b)
    assert counts["unet"] == 10 and stream.frames_skipped == 0


def test_filter_off_runs_every_frame(comp):
    stream, counts = make_stream(comp, threshold=None, max_skip=10)
    for _ in range(5):
        stream(frame(3))
    assert counts["unet"] == 5


def _at_similarity(ref: torch.Tensor, cos: float, rng: np.random.Generator) -> torch.Tensor:
    """A vector with exactly the given cosine similarity to `ref`."""
    unit = ref / ref.norm()
    other = torch.from_numpy(rng.normal(size=ref.shape[0])).float()
    other = other - (other @ unit) * unit
    return cos * unit + math.sqrt(1 - cos**2) * other / other.norm()


def _run(filt: SimilarityFilter, cos: float, count: int, seed: int = 0) -> list[bool]:
    rng = np.random.default_rng(seed)
    ref = torch.from_numpy(rng.normal(size=48)).float()
    filt.should_skip(ref)  # first frame: processed, becomes the reference
    decisions = []
    for _ in range(count):
        current = _at_similarity(ref, cos, rng)
        skipped = filt.should_skip(current)
        decisions.append(skipped)
        if not skipped:
            ref = current
    return decisions


def test_skip_rate_matches_the_probability_rule():
    # p = (cos - thr) / (1 - thr) = (0.95 - 0.9) / 0.1 = 0.5
    decisions = _run(SimilarityFilter(0.9, None, seed=123), 0.95, 4000)
    rate = sum(decisions) / len(decisions)
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / 4000)
    low = _run(SimilarityFilter(0.9, None, seed=5), 0.85, 500)  # below the threshold: never skipped
    assert not any(low)


def test_seeded_and_consecutive_limit_resets_after_any_processed_frame():
    a = _run(SimilarityFilter(0.9, 2, seed=9), 0.95, 3000)
    assert a == _run(SimilarityFilter(0.9, 2, seed=9), 0.95, 3000)  # same seed, same decisions
    runs, current = [], 0
    for skipped in a:
        if skipped:
            current += 1
        else:
            runs.append(current)
            current = 0
    assert max(runs) == 2  # never more than max_skip in a row
    # a run of 2 right after a run cut short by chance (<2) proves the counter resets on any processed frame
    assert any(prev < 2 and nxt == 2 for prev, nxt in zip(runs, runs[1:]))


def test_update_forces_the_next_frame_through_the_filter(comp):
    stream, counts = make_stream(comp, threshold=0.5, max_skip=None)
    same = frame(4)
    stream(same)
    stream(same)
    assert counts["unet"] == 1
    stream.update(prompt="the sea")
    stream(same)
    assert counts["unet"] == 2


def test_a_frame_from_another_device_than_the_reference_is_processed_not_compared():
    # host numpy frames give host downsamples, GPU tensors device ones: a caller may switch between them
    # (seen on the H200: cosine_similarity across devices raised). "meta" stands in for the other device.
    filt = SimilarityFilter(0.5, None, seed=0)
    host = torch.ones(3072)
    assert not filt.should_skip(host)
    assert not filt.should_skip(torch.ones(3072, device="meta"))  # new reference, no cross-device compare
    assert not filt.should_skip(host)  # back on the host: again a new reference
    assert filt.should_skip(host)  # identical to that reference: p = 1
