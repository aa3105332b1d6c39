"""Helpers shared by the core tests: a small moving clip and a stream with test defaults."""

from __future__ import annotations

import numpy as np

from dreamcam.core.config import StreamConfig
from dreamcam.core.stream import StreamDiffusion


def clip(count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` 64x64 frames: one random image brightened a little more each frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (64, 64, 3)).astype(np.int16)
    return [np.clip(base + 4 * i, 0, 255).astype(np.uint8) for i in range(count)]


def make(comp, **kw) -> StreamDiffusion:
    """A 64x64, 2-step, full-guidance stream; keywords override any default."""
    defaults = dict(width=64, height=64, t_index_list=(20, 40), cfg_type="full", guidance_scale=2.0,
                    prompt="the cat", negative_prompt="an ant")
    return StreamDiffusion(comp, StreamConfig(**{**defaults, **kw}))


def square_frames(count: int, seed: int, size: int = 64) -> list[np.ndarray]:
    """Random uint8 frames with a white square in the middle (a clear edge for ControlNet preprocessors)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        f = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        f[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
        out.append(f)
    return out
