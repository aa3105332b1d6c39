"""Stochastic similarity filter: skip frames that look like the last processed one.

skip probability = max(0, (cos - threshold) / (1 - threshold)), where cos is the cosine
similarity of a small downsampled copy of the input and that of the last PROCESSED input.
At most `max_skip` frames are skipped in a row; the counter resets after every processed
frame. The random draws come from a seeded generator, so runs are reproducible.
"""

from __future__ import annotations

import random

import torch


class SimilarityFilter:
    def __init__(self, threshold: float | None, max_skip: int | None = 10, seed: int = 0) -> None:
        self.threshold = threshold
        self.max_skip = max_skip
        self._rng = random.Random(seed)
        self._reference: torch.Tensor | None = None
        self.consecutive_skips = 0
        self.last_similarity: float | None = None

    def configure(self, threshold: float | None, max_skip: int | None) -> None:
        self.threshold, self.max_skip = threshold, max_skip

    def reset(self) -> None:
        self._reference, self.consecutive_skips = None, 0

    def skip_probability(self, similarity: float) -> float:
        thr = self.threshold
        if thr is None:
            return 0.0
        if thr >= 1.0:
            return 0.0
        return max(0.0, (similarity - thr) / (1.0 - thr))

    def should_skip(self, small: torch.Tensor) -> bool:
        """Decide for one frame (`small`: a flat float downsample). Records processed frames."""
        ref = self._reference
        # a frame of another size, or from another device (host numpy after GPU tensors), is not comparable
        if self.threshold is None or ref is None or ref.shape != small.shape or ref.device != small.device:
            self.record(small)
            return False
        sim = float(torch.nn.functional.cosine_similarity(self._reference, small, dim=0, eps=1e-6))
        self.last_similarity = sim
        limit_hit = self.max_skip is not None and self.consecutive_skips >= self.max_skip
        if not limit_hit and self._rng.random() < self.skip_probability(sim):
            self.consecutive_skips += 1
            return True
        self.record(small)
        return False

    def record(self, small: torch.Tensor) -> None:
        """Note a frame that is processed regardless of the filter (it becomes the reference)."""
        self._reference = small
        self.consecutive_skips = 0
