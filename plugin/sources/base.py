"""What every frame source shares: the `Source` interface, `SourceError` and the `Pacer`."""

from __future__ import annotations

import threading
import time
from typing import Protocol

from ..frames import Frame


class SourceError(RuntimeError):
    """A source could not be opened or was lost; the text says what to check."""


class Source(Protocol):
    name: str

    def open(self) -> None:
        """Acquire the device; raise SourceError with a clear message when it is not there."""

    def read(self) -> Frame:
        """Block until the next frame (paced at the source's rate); raise SourceError when lost."""

    def interrupt(self) -> None:
        """Wake a `read` that waits for its next frame, from another thread (the runner stopping)."""

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
