"""Video file source via PyAV: decodes RGB frames at the file's own rate (or `fps`), looping."""

from __future__ import annotations

import os
from pathlib import Path

from ..frames import Frame, now
from .base import Pacer, SourceError


class VideoFileSource:
    def __init__(self, path: str | os.PathLike, fps: float | None = None, loop: bool = True) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path.name}"
        self.fps, self.loop = fps, loop
        self._container = None
        self._frames = None
        self._pacer: Pacer | None = None
        self._index = 0

    def open(self) -> None:
        import av

        if self.path.is_dir():
            raise SourceError(f"video file {self.path} is a folder; give the path of a video file")
        if not self.path.is_file():
            raise SourceError(f"video file {self.path} does not exist")
        try:
            self._container = av.open(str(self.path))
            stream = self._container.streams.video[0]
        except (IndexError, Exception) as exc:
            self.close()
            raise SourceError(f"video file {self.path}: cannot read a video stream ({exc})") from exc
        rate = self.fps or float(stream.average_rate or 30)
        self._pacer = Pacer(rate)
        self._frames = self._container.decode(video=0)

    def read(self) -> Frame:
        if self._frames is None or self._pacer is None:
            raise SourceError(f"{self.name}: not open")
        self._pacer.wait()
        try:
            decoded = next(self._frames, None)
            if decoded is None and self.loop:
                self._container.seek(0)
                self._frames = self._container.decode(video=0)
                decoded = next(self._frames, None)
        except Exception as exc:
            raise SourceError(f"{self.name}: decoding failed ({exc})") from exc
        if decoded is None:
            raise SourceError(f"{self.name}: no more frames")
        frame = Frame(decoded.to_ndarray(format="rgb24"), now(), self._index)
        self._index += 1
        return frame

    def interrupt(self) -> None:
        if self._pacer is not None:
            self._pacer.interrupt()

    def close(self) -> None:
        self.interrupt()
        container, self._container, self._frames = self._container, None, None
        if container is not None:
            container.close()
