"""One video frame as it travels from a source to a sink, and resizing to the model's size."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Frame:
    """uint8 HxWx3 RGB image with the time it was captured (time.monotonic) and its capture index."""

    image: np.ndarray
    t_capture: float
    index: int
    meta: dict[str, Any] = field(default_factory=dict)


def now() -> float:
    return time.monotonic()


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check that `image` is HxWx3 uint8 (dropping an alpha channel) and make it contiguous."""
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    return np.ascontiguousarray(image[:, :, :3])


def fit(image: np.ndarray, width: int, height: int, policy: str = "crop") -> np.ndarray:
    """Resize to width x height: `crop` keeps the aspect and cuts the edges, `letterbox` keeps the
    aspect and pads with black, `stretch` ignores the aspect."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    from PIL import Image

    if policy == "stretch":
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    scale = max(width / w, height / h) if policy == "crop" else min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    if policy == "crop":
        x0, y0 = (new_w - width) // 2, (new_h - height) // 2
        return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - new_w) // 2, (height - new_h) // 2
    out[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return out
