"""Synthetic moving test pattern: the offline default source. The frame index is drawn as bits in
the top row of blocks so tests can read it back from the output of a pass-through pipeline."""

from __future__ import annotations

import numpy as np

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
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        self._x, self._y = x / width, y / height

    def open(self) -> None:
        self._pacer.reset()

    def read(self) -> Frame:
        self._pacer.wait()
        image = self.render(self._index)
        frame = Frame(image, now(), self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self._pacer.interrupt()

    def render(self, index: int) -> np.ndarray:
        phase = index / 30.0
        r = 0.5 + 0.5 * np.sin(2 * np.pi * (self._x + phase * 0.25))
        g = 0.5 + 0.5 * np.sin(2 * np.pi * (self._y * 1.5 - phase * 0.2))
        b = 0.5 + 0.5 * np.sin(2 * np.pi * (self._x + self._y + phase * 0.1))
        image = (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)
        self._draw_square(image, phase)
        draw_index(image, index)
        return image

    def _draw_square(self, image: np.ndarray, phase: float) -> None:
        size = max(4, min(self.width, self.height) // 5)
        cx = int((0.5 + 0.35 * np.cos(phase)) * (self.width - size))
        cy = int((0.5 + 0.35 * np.sin(phase)) * (self.height - size))
        image[cy : cy + size, cx : cx + size] = (250, 250, 250)


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
