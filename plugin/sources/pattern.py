"""Synthetic moving test pattern: the offline default source. The frame index is drawn as bits in
the top row of blocks so tests can read it back from the output of a pass-through pipeline."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..frames import Frame, now
from .base import Pacer

INDEX_BITS = 16


class PatternSource:
    name = "pattern"

    def __init__(self, width: int = 512, height: int = 512, fps: float = 30.0) -> None:
        if width < 32 or height < 32:
            raise ValueError("pattern: width and height must be at least 32")
        self.width, self.height, self.fps = width, height, fps
        self._pacer = Pacer(fps)
        self._index = 0
        self._x = np.arange(width, dtype=np.float32) / width  # one row
        self._y = np.arange(height, dtype=np.float32)[:, None] / height  # one column
        self._diagonal = np.arange(width + height, dtype=np.float32) / width  # (x + y) / width

    def open(self) -> None:
        self._pacer.reset()

    def read(self) -> Frame:
        self._pacer.wait()
        image = self.render(self._index)
        frame = Frame(image, now(), self._index)
        self._index += 1
        return frame

    def interrupt(self) -> None:
        self._pacer.interrupt()

    def close(self) -> None:
        self.interrupt()

    def render(self, index: int) -> np.ndarray:
        """Three moving colour waves: red across x, green across y, blue along the diagonal (a wave
        of x + y: each row is the previous one shifted by a pixel, so the blue plane is a strided
        view of one 1-D wave). A 512x512 frame costs about half a millisecond, so the source keeps
        up with 240 fps without taking a core, or the GIL, from the app it feeds."""
        phase = index / 30.0
        two_pi = np.float32(2 * np.pi)
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[..., 0] = _to_u8(np.sin(two_pi * (self._x + phase * 0.25)))
        image[..., 1] = _to_u8(np.sin(two_pi * (self._y * 1.5 - phase * 0.2)))
        wave = _to_u8(np.sin(two_pi * (self._diagonal + phase * 0.1)))
        image[..., 2] = as_strided(wave, (self.height, self.width), (1, 1), writeable=False)
        self._draw_square(image, phase)
        draw_index(image, index)
        return image

    def _draw_square(self, image: np.ndarray, phase: float) -> None:
        size = max(4, min(self.width, self.height) // 5)
        cx = int((0.5 + 0.35 * np.cos(phase)) * (self.width - size))
        cy = int((0.5 + 0.35 * np.sin(phase)) * (self.height - size))
        image[cy : cy + size, cx : cx + size] = (250, 250, 250)


def _to_u8(wave: np.ndarray) -> np.ndarray:
    """A wave in [-1, 1] as 0..255 (truncated, as the float image was)."""
    return ((wave * np.float32(0.5) + np.float32(0.5)) * np.float32(255)).astype(np.uint8)


def _block(image: np.ndarray) -> int:
    return max(2, image.shape[1] // INDEX_BITS)


def draw_index(image: np.ndarray, index: int) -> None:
    b = _block(image)
    for bit in range(INDEX_BITS):
        image[0:b, bit * b : (bit + 1) * b] = 255 if (index >> bit) & 1 else 0


def read_index(image: np.ndarray) -> int:
    """The frame index drawn by `draw_index` (exact on an unchanged or losslessly resized frame)."""
    b = _block(image)
    value = 0
    for bit in range(INDEX_BITS):
        cell = image[b // 4 : b - b // 4, bit * b + b // 4 : (bit + 1) * b - b // 4]
        if cell.mean() > 127:
            value |= 1 << bit
    return value
