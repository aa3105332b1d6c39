"""Frame sinks: one small interface, and `make_sink` that reads a sink spec.

Specs: `vcam` | `vcam:BACKEND` (pyvirtualcam backend name) | `file:PATH` (video file) |
`images:DIR` (numbered PNGs) | `preview` (a window) | `null`.
"""

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


def make_sink(spec: str, *, width: int, height: int, fps: float, max_frames: int | None = None) -> Sink:
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "null":
        return NullSink(max_frames=max_frames)
    if kind == "vcam":
        from .sink_vcam import VirtualCameraSink

        return VirtualCameraSink(width, height, fps, backend=arg or None)
    if kind == "file":
        from .sink_video import VideoFileSink

        if not arg:
            raise SinkError("sink: file needs a path, e.g. file:out.mp4")
        return VideoFileSink(arg, width, height, fps, max_frames=max_frames)
    if kind == "images":
        from .sink_video import ImageSequenceSink

        if not arg:
            raise SinkError("sink: images needs a folder, e.g. images:frames/")
        return ImageSequenceSink(arg, max_frames=max_frames)
    if kind == "preview":
        from .sink_preview import PreviewSink

        return PreviewSink()
    raise SinkError(f"sink: unknown kind {kind!r}; use vcam[:backend], file:PATH, images:DIR, preview or null")
