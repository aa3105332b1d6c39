"""Dynamic-shape ranges for exported and built engines (TensorRT optimisation profiles)."""

from __future__ import annotations

from dataclasses import dataclass


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _round_down(value: int, step: int) -> int:
    return value // step * step


@dataclass(frozen=True)
class ShapeProfile:
    """Image sides from min_side to max_side (pixels), optimised for opt_height x opt_width."""

    min_side: int
    max_side: int
    opt_height: int
    opt_width: int
    min_batch: int
    opt_batch: int
    max_batch: int
    vae_factor: int = 8

    def __post_init__(self) -> None:
        if not self.min_side <= min(self.opt_height, self.opt_width):
            raise ValueError(f"size {self.opt_width}x{self.opt_height} is below the profile minimum {self.min_side}")
        if not max(self.opt_height, self.opt_width) <= self.max_side:
            raise ValueError(f"size {self.opt_width}x{self.opt_height} is above the profile maximum {self.max_side}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {self.min_batch}, {self.opt_batch}, {self.max_batch}")

    def contains(self, height: int, width: int, batch: int) -> bool:
        return (
            self.min_side <= height <= self.max_side
            and self.min_side <= width <= self.max_side
            and self.min_batch <= batch <= self.max_batch
        )

    def image_shapes(self, channels: int = 3) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of an image input (B, C, H, W)."""
        lo, hi = self.min_side, self.max_side
        return (
            (self.min_batch, channels, lo, lo),
            (self.opt_batch, channels, self.opt_height, self.opt_width),
            (self.max_batch, channels, hi, hi),
        )

    def latent_shapes(self, channels: int = 4) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of a latent input (B, C, h, w)."""
        f = self.vae_factor
        lo, hi = self.min_side // f, self.max_side // f
        return (
            (self.min_batch, channels, lo, lo),
            (self.opt_batch, channels, self.opt_height // f, self.opt_width // f),
            (self.max_batch, channels, hi, hi),
        )

    def batch_shapes(self, *tail: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of an input whose only dynamic axis is the batch."""
        return ((self.min_batch, *tail), (self.opt_batch, *tail), (self.max_batch, *tail))


def choose_profile(
    height: int,
    width: int,
    batch: int,
    *,
    max_batch: int | None = None,
    min_side: int = 256,
    max_side: int = 1024,
    step: int = 64,
    vae_factor: int = 8,
) -> ShapeProfile:
    """The profile for a stream configured at height x width with `batch` images per call.

    Bounds are multiples of `step`; they widen (to the next multiple) to include a configured
    size outside 256..1024, so the configured size always fits and is the optimum. The batch is
    fixed at `batch` unless `max_batch` allows more (e.g. room for full guidance's doubled batch).
    """
    for name, side in (("height", height), ("width", width)):
        if side <= 0 or side % vae_factor:
            raise ValueError(f"{name} must be a positive multiple of {vae_factor}, got {side}")
    lo = min(_round_down(min_side, step), _round_down(min(height, width), step) or step)
    hi = max(_round_up(max_side, step), _round_up(max(height, width), step))
    lo = max(lo, step)
    return ShapeProfile(
        min_side=lo,
        max_side=hi,
        opt_height=height,
        opt_width=width,
        min_batch=batch,
        opt_batch=batch,
        max_batch=max(batch, max_batch or batch),
        vae_factor=vae_factor,
    )
