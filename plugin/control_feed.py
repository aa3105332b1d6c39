"""The second source of the `external` ControlNet preprocessor (`control_source`): a thread that
reads it and keeps the newest frame; a source that fails is retried with a growing pause (like
the main source), its error readable meanwhile."""

from __future__ import annotations

import logging
import threading
from typing import Optional

import numpy as np

from .sources import Source

log = logging.getLogger(__name__)

BACKOFF_START_S, BACKOFF_MAX_S = 0.2, 2.0


class ControlFeed:
    def __init__(self, source: Source, name: str = "") -> None:
        self.source = source
        self.name = name or getattr(source, "name", "control source")
        self._lock = threading.Lock()
        self._image: Optional[np.ndarray] = None
        self._index = 0  # grows with every frame read
        self._error = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Open the source (SourceError when it is missing) and read it in a thread."""
        self.source.open()
        self._thread = threading.Thread(target=self._run, name="dreamcam-control-source", daemon=True)
        self._thread.start()

    def latest(self) -> tuple[int, Optional[np.ndarray]]:
        """(frame number, newest image or None before the first)."""
        with self._lock:
            return self._index, self._image

    @property
    def error(self) -> str:
        """'' while frames come, else why not (the source is being retried)."""
        with self._lock:
            return self._error

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        try:
            self.source.close()  # wakes a read that waits for its next frame
        except Exception:  # noqa: BLE001 - closing a lost source may fail too
            log.debug("closing the control source failed", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = BACKOFF_START_S
        while not self._stop.is_set():
            try:
                frame = self.source.read()
            except Exception as exc:  # noqa: BLE001 - any failure: report, retry
                if self._stop.is_set():
                    return
                with self._lock:
                    self._error = f"control source {self.name} lost ({exc}); retrying"
                log.warning("%s", self._error)
                delay = self._reopen(delay)
                continue
            with self._lock:
                self._image, self._error = frame.image, ""
                self._index += 1
            delay = BACKOFF_START_S

    def _reopen(self, delay: float) -> float:
        try:
            self.source.close()
        except Exception:  # noqa: BLE001
            log.debug("closing the lost control source failed", exc_info=True)
        if self._stop.wait(delay):
            return delay
        try:
            self.source.open()
        except Exception as exc:  # noqa: BLE001
            with self._lock:
                self._error = f"control source {self.name} lost ({exc}); retrying every {delay:.1f} s"
        return min(delay * 2, BACKOFF_MAX_S)
