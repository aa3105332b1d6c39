"""A sink that discards frames (and counts them): for benchmarks and headless runs."""

from __future__ import annotations

import numpy as np

from .base import FrameLimit


class NullSink(FrameLimit):
    """Discards frames (counts them); for benchmarks and headless runs."""

    name = "null"
    repeat_last = False

    def __init__(self, fps: float | None = None, max_frames: int | None = None) -> None:
        self.fps = fps
        self.max_frames = max_frames
        self.frames_written = 0
        self.closed = False

    def open(self) -> None:
        self.closed = False

    def write(self, image: np.ndarray) -> None:
        if not self.closed and not self.done:
            self.frames_written += 1

    def close(self) -> None:
        self.closed = True
