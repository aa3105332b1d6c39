"""The control page's preview: the newest output (and input) frame as a small JPEG, at most a few
times a second, encoded in its own thread and only while someone watches, so the stream pays
for little more than a reference to the frame."""

from __future__ import annotations

import io
import logging
import threading
from typing import Callable

import numpy as np
from PIL import Image

from .frames import Frame

log = logging.getLogger(__name__)

KINDS = ("output", "input")  # the byte that starts a preview message is the kind's index here
DEFAULT_FPS = 5.0
MAX_SIDE = 384  # pixels: enough for a dock, small enough to stay cheap
QUALITY = 75

FrameTap = Callable[[], "tuple[Frame | None, Frame | None]"]  # (input, output)


def encode_jpeg(image: object, max_side: int = MAX_SIDE, quality: int = QUALITY) -> bytes:
    """A uint8 HxWx3 RGB image (numpy, or anything `np.asarray` reads) as JPEG, shrunk to `max_side`."""
    picture = Image.fromarray(np.ascontiguousarray(np.asarray(image, dtype=np.uint8)), "RGB")
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class PreviewEncoder:
    """Every 1/fps s: for each kind someone wants, encode the newest frame if it is new, and hand
    the bytes to `deliver(kind, jpeg)` (called in this thread)."""

    def __init__(self, frames: FrameTap, deliver: Callable[[str, bytes], None],
                 wanted: Callable[[], frozenset[str]], fps: float = DEFAULT_FPS) -> None:
        if not 0 < fps <= 30:
            raise ValueError(f"preview fps: must be from 0 to 30, got {fps}")
        self._frames, self._deliver, self._wanted, self.period = frames, deliver, wanted, 1.0 / fps
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent: dict[str, Frame] = {}
        self.encoded = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dreamcam-web-preview", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def resend(self) -> None:
        """Send the current frames again on the next tick (a new viewer has none yet)."""
        self._sent = {}

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self._tick()
            except Exception:  # a frame that cannot be encoded must not end the previews
                log.exception("preview frame failed")

    def _tick(self) -> None:
        wanted = self._wanted()
        if not wanted:
            return
        captured, published = self._frames()
        for kind, frame in (("input", captured), ("output", published)):
            if kind in wanted and frame is not None and self._sent.get(kind) is not frame:
                self._sent[kind] = frame
                self._deliver(kind, encode_jpeg(frame.image))
                self.encoded += 1
