"""Camera capture via OpenCV: by index, by device path or name, or any URL/file OpenCV opens.
The driver buffer is kept at one frame where the backend allows, so frames are fresh."""

from __future__ import annotations

import sys

import numpy as np

from ..frames import Frame, now
from .base import SourceError

FAILED_READS_BEFORE_LOST = 5


def _open_args(device: int | str):
    import cv2

    if isinstance(device, int):
        if sys.platform.startswith("win"):
            return (device, cv2.CAP_DSHOW)  # MSMF opens in seconds; DirectShow opens at once
        if sys.platform == "darwin":
            return (device, cv2.CAP_AVFOUNDATION)
        return (device, cv2.CAP_ANY)
    if sys.platform.startswith("win") and not any(c in device for c in "/\\."):
        return (f"video={device}", cv2.CAP_DSHOW)  # DirectShow opens a camera by its name
    return (device, cv2.CAP_ANY)


class CameraSource:
    def __init__(self, device: int | str = 0, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None) -> None:
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.name = f"camera:{device}"
        self._cap = None
        self._index = 0

    def open(self) -> None:
        try:
            import cv2
        except ImportError as exc:
            raise SourceError("camera: OpenCV is missing; run `pip install opencv-python`") from exc
        cap = cv2.VideoCapture(*_open_args(self.device))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: cannot open; check that it is connected and not in use "
                              "by another app (`dreamcam devices` lists cameras)")
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap

    def read(self) -> Frame:
        import cv2

        cap = self._cap
        if cap is None:
            raise SourceError(f"{self.name}: not open")
        for _ in range(FAILED_READS_BEFORE_LOST):
            ok, bgr = cap.read()
            if ok and bgr is not None:
                image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                frame = Frame(np.ascontiguousarray(image), now(), self._index)
                self._index += 1
                return frame
        raise SourceError(f"{self.name}: no frames (unplugged or taken by another app?)")

    def interrupt(self) -> None:
        """Nothing to wake: a camera's read returns with the device's next frame."""

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


def list_cameras(max_index: int = 6) -> list[dict]:
    """Cameras that open, by index (OpenCV cannot list names portably)."""
    import cv2

    found = []
    for index in range(max_index):
        cap = cv2.VideoCapture(*_open_args(index))
        if cap.isOpened():
            found.append({"index": index, "name": _linux_name(index),
                          "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                          "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                          "fps": cap.get(cv2.CAP_PROP_FPS)})
        cap.release()
    return found


def _linux_name(index: int) -> str:
    """The driver's name for /dev/videoN on Linux (empty elsewhere)."""
    path = f"/sys/class/video4linux/video{index}/name"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""
