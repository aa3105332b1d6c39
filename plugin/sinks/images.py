"""A numbered PNG sequence in a folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import FrameLimit, SinkError


class ImageSequenceSink(FrameLimit):
    name = "images"
    fps = None
    repeat_last = False

    def __init__(self, folder: str | os.PathLike, *, max_frames: int | None = None) -> None:
        self.folder = Path(folder)
        self.max_frames = max_frames
        self.frames_written = 0
        self._open = False

    def open(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"image folder {self.folder}: cannot create ({exc})") from exc
        self._open = True

    def write(self, image: np.ndarray) -> None:
        from PIL import Image

        if not self._open or self.done:
            return
        Image.fromarray(image).save(self.folder / f"frame_{self.frames_written:06d}.png")
        self.frames_written += 1

    def close(self) -> None:
        self._open = False
