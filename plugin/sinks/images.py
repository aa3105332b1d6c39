"""A numbered PNG sequence in a folder. A folder deleted while recording is made again; a frame
that cannot be written (full disk) leaves no partial file behind and raises SinkError, which the
runner's SinkGuard retries with back-off."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .base import FrameLimit, SinkError, describe_os_error

log = logging.getLogger(__name__)
PATTERN = "frame_{:06d}.png"


class ImageSequenceSink(FrameLimit):
    name = "images"
    fps = None
    repeat_last = False

    def __init__(self, folder: str | os.PathLike, *, max_frames: int | None = None, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.max_frames = max_frames
        self.overwrite = overwrite
        self.frames_written = 0
        self._open = False
        self._remaking = False

    def open(self) -> None:
        if not self.overwrite and any(self.folder.glob("frame_*.png")):
            raise SinkError(f"image folder {self.folder} already holds frames; pass --overwrite to replace "
                            "them, or choose another folder")
        self._make_folder()
        self._open = True

    def _make_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"image folder {self.folder}: cannot create ({describe_os_error(exc)})") from exc

    def write(self, image: np.ndarray) -> None:
        if not self._open or self.done:
            return
        path = self.folder / PATTERN.format(self.frames_written)
        if not self.folder.is_dir():
            if not self._remaking:  # once per outage; the runner's guard reports a lasting failure
                log.warning("image folder %s is gone; making it again", self.folder)
            self._remaking = True
            self._make_folder()
        try:
            self._save(image, path)
        except OSError as exc:
            raise SinkError(f"image folder {self.folder}: cannot write {path.name} ({describe_os_error(exc)})") from exc
        self.frames_written += 1
        self._remaking = False

    @staticmethod
    def _save(image: np.ndarray, path: Path) -> None:
        """Write to a temporary name, then rename: a frame is either whole or not there."""
        from PIL import Image

        partial = path.with_name(path.name + ".part")
        try:
            Image.fromarray(image).save(partial, format="PNG")
            os.replace(partial, path)
        except OSError:
            partial.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        self._open = False
