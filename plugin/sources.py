"""Frame sources: one small interface, and `make_source` that reads a source spec.

Specs: `pattern` | `screen` | `screen:N` (monitor N) | `screen:x,y,w,h` | `camera` | `camera:N` |
`camera:NAME_OR_PATH` | `file:PATH` (video file, loops).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from .frames import Frame


class SourceError(RuntimeError):
    """A source could not be opened or was lost; the text says what to check."""


class Source(Protocol):
    name: str

    def open(self) -> None:
        """Acquire the device; raise SourceError with a clear message when it is not there."""

    def read(self) -> Frame:
        """Block until the next frame (paced at the source's rate); raise SourceError when lost."""

    def close(self) -> None:
        """Release the device; safe to call twice."""


class Pacer:
    """Sleeps so that successive `wait()` calls return at most `fps` times a second."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self._next = 0.0
        self._wake = threading.Event()

    def wait(self) -> None:
        now = time.monotonic()
        if not self._next:
            self._next = now
        if self._next > now:
            self._wake.wait(self._next - now)
        self._next += self.period
        now = time.monotonic()
        if self._next < now - self.period:  # fell far behind: restart the beat instead of bursting
            self._next = now

    def interrupt(self) -> None:
        """Wake a waiting thread now (on close or stop); `reset` re-arms the pacer."""
        self._wake.set()

    def reset(self) -> None:
        self._wake.clear()
        self._next = 0.0


def make_source(spec: str, *, width: int = 512, height: int = 512, fps: float = 30.0) -> Source:
    """Build a source from its spec; `width`/`height` size the test pattern and ask the camera."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "pattern":
        from .source_pattern import PatternSource

        return PatternSource(width, height, fps)
    if kind == "screen":
        from .source_screen import ScreenSource, parse_screen_arg

        monitor, region = parse_screen_arg(arg)
        return ScreenSource(monitor=monitor, region=region, fps=fps)
    if kind == "camera":
        from .source_camera import CameraSource

        device: int | str = int(arg) if arg.strip().isdigit() else (arg or 0)
        return CameraSource(device, width=width, height=height, fps=fps)
    if kind == "file":
        from .source_video import VideoFileSource

        if not arg:
            raise SourceError("source: file needs a path, e.g. file:clip.mp4")
        return VideoFileSource(arg, fps=None)
    raise SourceError(
        f"source: unknown kind {kind!r}; use pattern, screen[:N|:x,y,w,h], camera[:N], or file:PATH"
    )
