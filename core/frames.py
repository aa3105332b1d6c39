"""Frames: uint8 HxWx3 (numpy or torch, any device) <-> tensors, and fitting to the stream size."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def check_frame(frame: Any, batch: int | None = None) -> None:
    """Raise ValueError unless `frame` is uint8 HxWx3 (or BxHxWx3 with B == batch)."""
    if not isinstance(frame, (np.ndarray, torch.Tensor)):
        raise ValueError(f"frame: must be a numpy array or torch tensor, got {type(frame).__name__}")
    if frame.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"frame: must be uint8, got {frame.dtype}")
    shape = tuple(frame.shape)
    ok3 = len(shape) == 3 and shape[-1] in (3, 4)
    ok4 = len(shape) == 4 and shape[-1] in (3, 4) and (batch is None or shape[0] == batch)
    if not (ok3 or ok4):
        want = "HxWx3" if not batch or batch == 1 else f"{batch}xHxWx3"
        raise ValueError(f"frame: must have shape {want} (RGB, uint8), got {shape}")


def to_tensor(frame: np.ndarray | torch.Tensor, device: torch.device,
              stager: "HostStager | None" = None) -> torch.Tensor:
    """uint8 (B)xHxWxC -> uint8 BxHxWx3 tensor on `device` (alpha dropped, no copy when possible).
    Host frames bound for a GPU go through `stager`'s reused pinned buffer when one is given."""
    t = torch.from_numpy(np.ascontiguousarray(frame)) if isinstance(frame, np.ndarray) else frame
    if t.ndim == 3:
        t = t.unsqueeze(0)
    t = t[..., :3]
    if t.device != device:
        if t.device.type == "cpu" and device.type == "cuda":
            t = stager.stage(t) if stager is not None else t.contiguous().pin_memory()
        t = t.to(device, non_blocking=True)
    return t


class HostStager:
    """One pinned host buffer reused for every upload of the same shape.

    Pinning a fresh buffer per frame costs measurable time at hundreds of frames per second
    (bench: 145.9 vs 154.1 fps). Before the buffer is overwritten we wait on the event recorded
    after the previous upload was enqueued, so an in-flight copy never reads a half-new frame.
    The copy into it is numpy's: torch's CPU `copy_` of a 512x512 frame spreads over its intra-op
    thread pool and took 3-5x longer (0.48 vs 0.09-0.15 ms measured on 2 cores), on the path
    the GPU waits for."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._uploaded: torch.cuda.Event | None = None

    def stage(self, frames: torch.Tensor) -> torch.Tensor:
        if self._buffer is None or self._buffer.shape != frames.shape:
            self._buffer = torch.empty(frames.shape, dtype=frames.dtype).pin_memory()
            self._uploaded = None
        elif self._uploaded is not None:
            self._uploaded.synchronize()
        host_copy(self._buffer, frames)
        return self._buffer

    def mark_uploaded(self) -> None:
        """Call right after enqueueing the copy out of the staged buffer (one event, recorded again)."""
        if self._buffer is not None and torch.cuda.is_available():
            if self._uploaded is None:
                self._uploaded = torch.cuda.Event()
            self._uploaded.record()


def host_copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[...] = src for host uint8 tensors, as one numpy copy (see HostStager)."""
    np.copyto(dst.numpy(), src.numpy(), casting="no")


def fit(frames: torch.Tensor, width: int, height: int, policy: str = "crop") -> torch.Tensor:
    """Resize uint8 BxHxWx3 to BxheightxWidthx3. crop: fill and cut the overflow (centred);
    letterbox: fit inside and pad with black; stretch: ignore the aspect ratio."""
    _, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    if policy == "stretch":
        out = _resize(x, height, width)
    elif policy == "crop":
        scale = max(width / w, height / h)
        nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
        y = _resize(x, nh, nw)
        top, left = (nh - height) // 2, (nw - width) // 2
        out = y[:, :, top:top + height, left:left + width]
    elif policy == "letterbox":
        scale = min(width / w, height / h)
        nh, nw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
        y = _resize(x, nh, nw)
        out = x.new_zeros(x.shape[0], 3, height, width)
        top, left = (height - nh) // 2, (width - nw) // 2
        out[:, :, top:top + nh, left:left + nw] = y
    else:
        raise ValueError(f"resize: must be crop, letterbox or stretch, got {policy!r}")
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if (x.shape[-2], x.shape[-1]) == (h, w):
        return x
    shrinking = h < x.shape[-2] or w < x.shape[-1]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrinking)


def to_unit(frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 BxHxWx3 -> Bx3xHxW in [-1, 1]."""
    return frames.permute(0, 3, 1, 2).to(dtype).div(127.5).sub(1.0)


def from_unit(images: torch.Tensor) -> torch.Tensor:
    """Bx3xHxW in [-1, 1] -> uint8 BxHxWx3."""
    x = images.float().add(1.0).mul(127.5).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1)


def like_input(out: torch.Tensor, frame: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Return uint8 frames in the kind of `frame`: numpy in -> numpy out; tensor -> same device.
    A single HxWx3 input gives a single HxWx3 output."""
    if frame.ndim == 3:
        out = out[0]
    if isinstance(frame, np.ndarray):  # a copy: callers may keep or edit it, the stream keeps its own
        return out.numpy().copy() if out.device.type == "cpu" else out.cpu().numpy()
    return out.to(frame.device)


def small_copy(frame: np.ndarray | torch.Tensor, side: int = 32) -> torch.Tensor:
    """A cheap flat float32 downsample (side x side x 3 per frame, centred to [-1, 1], as the
    model sees it) of (B)xHxWx3 for the similarity filter.

    Host numpy frames stay on the host (strided pick, then area average), so no GPU sync; when
    the picked size divides evenly (e.g. 512 or 1080p) numpy does it in one pass (same values,
    a fraction of torch's per-op cost at hundreds of frames per second)."""
    if isinstance(frame, np.ndarray) and any(st < 0 for st in frame.strides):
        frame = np.ascontiguousarray(frame)  # e.g. an OpenCV BGR->RGB view frame[..., ::-1]
    if isinstance(frame, np.ndarray):
        fast = _small_copy_numpy(frame, side)
        if fast is not None:
            return fast
    t = torch.from_numpy(frame) if isinstance(frame, np.ndarray) else frame
    if t.ndim == 3:
        t = t.unsqueeze(0)
    t = t[..., :3]
    h, w = t.shape[1], t.shape[2]
    sy, sx = max(1, h // (side * 4)), max(1, w // (side * 4))
    x = t[:, ::sy, ::sx].permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(x, side).div_(127.5).sub_(1.0).flatten()


def _small_copy_numpy(frame: np.ndarray, side: int) -> torch.Tensor | None:
    """`small_copy` of a host frame as block means (integer sums of the block's strided picks, so
    the values equal the area average exactly), or None when the blocks do not divide evenly."""
    a = frame if frame.ndim == 4 else frame[None]
    b, h, w = a.shape[:3]
    x = a[:, :: max(1, h // (side * 4)), :: max(1, w // (side * 4)), :3]
    kh, kw = x.shape[1] // side, x.shape[2] // side
    if x.shape[1] % side or x.shape[2] % side:
        return None
    total = np.zeros((b, side, side, 3), dtype=np.uint32)
    for i in range(kh):
        for j in range(kw):
            total += x[:, i::kh, j::kw]
    means = total.astype(np.float32) / np.float32(kh * kw)
    return torch.from_numpy(np.ascontiguousarray(means.transpose(0, 3, 1, 2))).div_(127.5).sub_(1.0).flatten()
