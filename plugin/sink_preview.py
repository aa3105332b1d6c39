"""A preview window (OpenCV imshow); needs a display and a GUI build of OpenCV."""

from __future__ import annotations

import numpy as np

from .sinks import SinkError

WINDOW = "Dreamcam preview"


class PreviewSink:
    name = "preview"
    fps = None
    repeat_last = False

    def __init__(self) -> None:
        self._cv2 = None

    def open(self) -> None:
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
