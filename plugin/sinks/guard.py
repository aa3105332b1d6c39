"""The failure policy of every sink: a failing sink is reported once (one log line and an error
text for the status), retried with back-off while the frames in between are dropped, and said to
be back when a write works again. `SinkFailed` (a recording whose disk is full) is not retried:
the sink is failed for good and the run should stop and exit non-zero."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from .base import Sink, SinkFailed

log = logging.getLogger(__name__)

RETRY_START_S = 0.2
RETRY_MAX_S = 5.0


class SinkGuard:
    """Wraps one sink's `write` and `close`. `error` is "" while the sink works; `failed` is
    True once it cannot go on. Thread-safe enough for one writer and any number of readers."""

    def __init__(self, sink: Sink, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self.error = ""
        self.failed = False
        self.dropped = 0  # frames not written while the sink was failing
        self._delay = RETRY_START_S
        self._retry_at = 0.0

    @property
    def label(self) -> str:
        return getattr(self.sink, "name", type(self.sink).__name__)

    def write(self, image: np.ndarray) -> bool:
        """True when the frame was written; False when the sink is failing (waiting to retry,
        or failed for good). Never raises."""
        if self.failed or (self.error and self._clock() < self._retry_at):
            self.dropped += 1
            return False
        try:
            self.sink.write(image)
        except SinkFailed as exc:
            self._fail_for_good(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - any write error gets the same policy
            self._failing(exc)
            return False
        if self.error:
            log.warning("output %s works again (%d frames were not written)", self.label, self.dropped)
            with self._lock:
                self.error, self._delay = "", RETRY_START_S
        return True

    def close(self) -> None:
        """Close the sink; a SinkFailed from it (the last write of a recording) marks it failed."""
        try:
            self.sink.close()
        except SinkFailed as exc:
            self._fail_for_good(str(exc))

    def _failing(self, exc: Exception) -> None:
        first = not self.error
        text = f"output {self.label} failing ({exc}); retrying"
        if first:
            log.warning("%s", text)  # once: not one line per frame
        else:
            log.debug("output %s still failing: %s", self.label, exc)
        with self._lock:
            self.error = text
            self._retry_at = self._clock() + self._delay
            self._delay = min(self._delay * 2, RETRY_MAX_S)
        self.dropped += 1

    def _fail_for_good(self, text: str) -> None:
        if not self.failed:  # the run's owner says it (the CLI's last line, the status): info here
            log.info("%s", text)
        with self._lock:
            self.error, self.failed = text, True
        self.dropped += 1
