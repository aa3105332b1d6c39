"""Rolling rates and averages for the status line (fps in/out, inference time, latency)."""

from __future__ import annotations

import collections
import threading
import time


class RateMeter:
    """Events per second over the last `window` seconds."""

    def __init__(self, window: float = 2.0) -> None:
        self._window = window
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self.count = 0

    def tick(self, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        with self._lock:
            self._times.append(t)
            self.count += 1
            self._trim(t)

    def rate(self, t: float | None = None) -> float:
        t = time.monotonic() if t is None else t
        with self._lock:
            self._trim(t)
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(t - self._times[0], self._times[-1] - self._times[0])
            return (n - 1) / span if span > 0 else 0.0

    def _trim(self, t: float) -> None:
        while self._times and t - self._times[0] > self._window:
            self._times.popleft()


class Average:
    """Mean of the last `size` samples."""

    def __init__(self, size: int = 30) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(value)

    def mean(self) -> float:
        with self._lock:
            return sum(self._values) / len(self._values) if self._values else 0.0
