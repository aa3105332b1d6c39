"""What every frame sink shares: the `Sink` interface, `SinkError` and the `FrameLimit` counter."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class SinkError(RuntimeError):
    """A sink could not be opened; the text says what to install or check."""


class Sink(Protocol):
    name: str
    fps: float | None  # paced sinks get a frame every 1/fps s; None: each new frame once
    repeat_last: bool  # paced sinks: send the last frame again when no new one is ready

    def open(self) -> None: ...

    def write(self, image: np.ndarray) -> None: ...

    def close(self) -> None: ...


class FrameLimit:
    """Mixin for sinks that count written frames: `done` once `max_frames` (if set) were written."""

    max_frames: int | None = None
    frames_written: int = 0

    @property
    def done(self) -> bool:
        return self.max_frames is not None and self.frames_written >= self.max_frames
