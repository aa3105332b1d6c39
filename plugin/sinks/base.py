"""What every frame sink shares: the `Sink` interface, `SinkError` / `SinkFailed` and the
`FrameLimit` counter."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class SinkError(RuntimeError):
    """A sink could not be opened or could not write a frame; the text says what to install or
    check. Raised by `write`, it is worth retrying later (see `guard.SinkGuard`)."""


class SinkFailed(SinkError):
    """The sink cannot go on (a recording whose disk is full): not retried; the run stops."""


DISK_FULL_ERRNOS = frozenset({28, 27, 122})  # ENOSPC, EFBIG (file-size limit), EDQUOT


def describe_os_error(exc: BaseException) -> str:
    """'the disk is full (...)' for a full disk or a size limit, else the error in one line."""
    errno = getattr(exc, "errno", None)
    lines = str(exc).splitlines()
    text = getattr(exc, "strerror", None) or (lines[0] if lines else type(exc).__name__)
    if errno in DISK_FULL_ERRNOS:
        return f"the disk is full ({text})"
    return str(text)


class Sink(Protocol):
    name: str
    fps: float | None  # paced sinks get a frame every 1/fps s; None: each new frame once
    repeat_last: bool  # paced sinks: send the last frame again when no new one is ready
    done: bool  # True once the sink wants no more frames (a frame limit reached): the run ends

    def open(self) -> None: ...

    def write(self, image: np.ndarray) -> None:
        """Write one frame; raise SinkError (retried later) or SinkFailed (the sink is done for)."""

    def close(self) -> None: ...


class FrameLimit:
    """Mixin for sinks that count written frames: `done` once `max_frames` (if set) were written."""

    max_frames: int | None = None
    frames_written: int = 0

    @property
    def done(self) -> bool:
        return self.max_frames is not None and self.frames_written >= self.max_frames
