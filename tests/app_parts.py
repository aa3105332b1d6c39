"""Stand-ins for hardware this machine lacks (a physical camera, a virtual-camera driver), behind
the app's real Source and Sink interfaces, plus a builder for the real app on the tiny model."""

from __future__ import annotations

import threading
import time

import numpy as np

from dreamcam.plugin.frames import Frame
from dreamcam.plugin.sources import Pacer


class StillCamera:
    """A camera pointed at a still scene: the same picture every frame, at `fps`."""

    name = "still-camera"

    def __init__(self, width: int = 64, height: int = 64, fps: float = 20.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        self._pacer = Pacer(fps)
        self._index = 0

    def open(self) -> None:
        self._pacer.reset()

    def read(self) -> Frame:
        self._pacer.wait()
        self._index += 1
        return Frame(self.image.copy(), time.monotonic(), self._index)

    def interrupt(self) -> None:
        self._pacer.interrupt()

    def close(self) -> None:
        self.interrupt()


class RecordingSink:
    """A virtual camera that keeps what it was sent (each new frame once)."""

    name = "recording"
    fps = None
    repeat_last = False
    done = False

    def __init__(self) -> None:
        self.frames: list[tuple[float, np.ndarray]] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        pass

    def write(self, image: np.ndarray) -> None:
        with self._lock:
            self.frames.append((time.monotonic(), image.copy()))

    def close(self) -> None:
        pass

    def count(self) -> int:
        with self._lock:
            return len(self.frames)

    def last(self) -> np.ndarray:
        with self._lock:
            return self.frames[-1][1]

    def since(self, t: float) -> list[np.ndarray]:
        with self._lock:
            return [img for ts, img in self.frames if ts >= t]
