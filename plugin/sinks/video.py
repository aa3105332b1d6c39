"""A video file sink (PyAV): one frame per new output."""

from __future__ import annotations

import fractions
import os
from pathlib import Path

import numpy as np

from .base import FrameLimit, SinkError


class VideoFileSink(FrameLimit):
    name = "file"
    fps = None  # unpaced: every new output frame is written once
    repeat_last = False

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, *,
                 max_frames: int | None = None, codec: str | None = None) -> None:
        self.path = Path(path)
        self.width, self.height, self.rate = width, height, fps
        self.max_frames = max_frames
        self.codec = codec
        self.frames_written = 0
        self._container = None
        self._stream = None

    def open(self) -> None:
        import av

        if self.path.parent and not self.path.parent.exists():
            raise SinkError(f"video file: folder {self.path.parent} does not exist")
        codec = self.codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
        try:
            self._container = av.open(str(self.path), mode="w")
            rate = fractions.Fraction(self.rate).limit_denominator(1001)
            self._stream = self._container.add_stream(codec, rate=rate)
        except Exception as exc:
            raise SinkError(f"video file {self.path}: cannot write ({exc})") from exc
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"preset": "veryfast", "crf": "20"}

    def write(self, image: np.ndarray) -> None:
        import av

        if self._container is None or self.done:
            return
        h, w = image.shape[:2]
        if (w, h) != (self.width, self.height):
            raise ValueError(f"frame is {w}x{h}, the video is {self.width}x{self.height}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self.frames_written
        self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    def close(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.mux(self._stream.encode(None))
        finally:
            container.close()
