"""A preview window (OpenCV imshow); needs a display and a GUI build of OpenCV."""

from __future__ import annotations

import os
import sys

import numpy as np

from .base import SinkError

WINDOW = "Dreamcam preview"


class PreviewSink:
    name = "preview"
    fps = None
    repeat_last = False
    done = False

    def __init__(self) -> None:
        self._cv2 = None

    def open(self) -> None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            # OpenCV's GUI backends abort the whole process without a display: check first
            raise SinkError("preview: no display (DISPLAY is not set); use --sink file:out.mp4 or vcam instead")
        try:
            import cv2

            cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
        except Exception as exc:
            raise SinkError(f"preview: no window can be shown here ({exc}); needs a display and "
                            "`pip install opencv-python` (not the headless build)") from exc
        self._cv2 = cv2

    def write(self, image: np.ndarray) -> None:
        if self._cv2 is None:
            return
        self._cv2.imshow(WINDOW, image[:, :, ::-1])
        self._cv2.waitKey(1)

    def close(self) -> None:
        cv2, self._cv2 = self._cv2, None
        if cv2 is not None:
            cv2.destroyWindow(WINDOW)
