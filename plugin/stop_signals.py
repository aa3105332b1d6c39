"""Ctrl+C (SIGINT) and SIGTERM at any moment of `dreamcam run`: one stop request, never lost.

Installed before anything starts. A signal always sets `requested` (checked before and after the
model load and while streaming); inside `interruptible()` (the model load) it also raises
KeyboardInterrupt at once, so a long load stops without waiting for its end. Should a library
swallow that KeyboardInterrupt, the request is still set and the caller sees it after the load.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signum: int | None = None
        self._raise = False
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignals":
        """Take over SIGINT and SIGTERM (main thread only); `restore` gives them back."""
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """The shell's convention for a run stopped by a signal before it started: 128 + N."""
        return 128 + (self.signum or signal.SIGINT)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Within this block a stop request raises KeyboardInterrupt (also one made before it)."""
        if self.requested.is_set():
            raise KeyboardInterrupt
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = self.signum or signum
        self.requested.set()
        if self._raise:
            self._raise = False  # once: a second Ctrl+C must not interrupt the clean-up
            raise KeyboardInterrupt
