"""Flicker of the output for a still scene seen by a camera, for each temporal feedback setting.

The measure: a static input frame plus camera-like noise (per-frame Gaussian sensor noise, sigma
3 grey levels, and optionally a random sub-pixel shift per frame, bilinear), run through the stream
one frame at a time; flicker = the mean absolute change of the uint8 output from one frame to the
next, over pixels and channels, in grey levels 0-255:

    flicker = mean_n mean_pixels |out_n - out_{n-1}|

The random-weight bench models decode to almost black frames (mean ~2 grey levels at 512), so
most output pixels clip at 0 and the uint8 flicker understates the change. Two numbers show what
the knobs do with these models: `image_flicker`, the same mean absolute change of the decoder's
output before the uint8 clip (in grey levels, 127.5 a unit), and `latent_flicker`, that of the
output latent x0 (the decoder's input), each also as a share of the no-feedback value. Both are
kept by `DecodeTap`, which wraps the engine's decoder with two in-place copies inside the step,
so that every CUDA graph replay writes them (the stream itself keeps x0 only while feedback is on).

For reference the same number of the input frames themselves is reported (Gaussian noise of
sigma s alone gives 2 s / sqrt(pi) ~ 1.13 s). With feedback, the output first moves to the fixed
point of the loop (about 1 / (1 - share) frames, longer for larger shares), so `warmup` frames
after each reset are not measured. fps = host uint8 -> host uint8, one frame at a time, through
the app's graph driver, timed in a loop of its own (the flicker loop copies every output).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .timing import sync

LATENT_SHARES = (0.0, 0.25, 0.5, 0.75)
IMAGE_SHARES = (0.0, 0.25, 0.5)
SETTINGS: tuple[tuple[float, float], ...] = tuple((a, b) for b in IMAGE_SHARES for a in LATENT_SHARES)


@dataclass(frozen=True)
class CameraNoise:
    sigma: float = 3.0  # grey levels, per pixel and channel, new each frame
    shift_px: float = 0.0  # each frame shifted by a random (dx, dy) in [-shift_px, shift_px] (< 1)
    pool: int = 32  # distinct noisy frames, cycled (made once: the timing loop does no numpy work)
    seed: int = 0


def static_scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour field (float32 HxWx3, 0-255): bilinear upsampling of a coarse random grid."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(20, 235, (1, 3, height // 32 + 2, width // 32 + 2)).astype(np.float32))
    big = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return big[0].permute(1, 2, 0).numpy()


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Bilinear sub-pixel shift (|dx|, |dy| < 1; edges repeat)."""
    def along(img: np.ndarray, d: float, axis: int) -> np.ndarray:
        step = 1 if d >= 0 else -1
        n = img.shape[axis]
        idx = np.clip(np.arange(n) - step, 0, n - 1)
        return (1 - abs(d)) * img + abs(d) * np.take(img, idx, axis=axis)
    return along(along(image, dx, 1), dy, 0)


def camera_frames(base: np.ndarray, noise: CameraNoise) -> list[np.ndarray]:
    """`noise.pool` uint8 frames of the still scene `base` (float HxWx3) as a camera sees it."""
    if not 0 <= noise.shift_px < 1:
        raise ValueError(f"shift_px must be from 0 to below 1, got {noise.shift_px}")
    rng = np.random.default_rng(noise.seed)
    out = []
    for _ in range(noise.pool):
        img = base
        if noise.shift_px:
            img = _shift(img, *rng.uniform(-noise.shift_px, noise.shift_px, 2))
        img = img + rng.normal(0.0, noise.sigma, img.shape)
        out.append(np.ascontiguousarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)))
    return out


def flicker(frames: Sequence[np.ndarray]) -> float:
    """Mean absolute change from one uint8 frame to the next (grey levels)."""
    stack = np.stack(frames).astype(np.int16)
    return float(np.abs(np.diff(stack, axis=0)).mean())


class DecodeTap:
    """The engine's decoder, plus in-place copies of its input (the output latent x0) and output
    (the image before the uint8 clip) into buffers of its own: captured with the step, so every
    graph replay refreshes them. Bench-only: `StepModules(decode=DecodeTap(modules.decode))`."""

    def __init__(self, decode: Any) -> None:
        self.decode = decode
        self.latent: torch.Tensor | None = None
        self.image: torch.Tensor | None = None

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        out = self.decode(latents)
        if self.latent is None or self.latent.shape != latents.shape:
            self.latent, self.image = torch.empty_like(latents), torch.empty_like(out)
        self.latent.copy_(latents)
        self.image.copy_(out)
        return out


def _mean_change(kept: Sequence[torch.Tensor], scale: float = 1.0) -> float:
    return float(torch.stack(kept).float().diff(dim=0).abs().mean()) * scale


def run_flicker(components: Any, modules: Any, *, size: int = 512, warmup: int = 60, frames: int = 120,
                settings: Sequence[tuple[float, float]] = SETTINGS, noise: CameraNoise = CameraNoise(),
                config: Any = None, prompt: str = "a watercolor painting of a city") -> dict:
    """One 1-step img2img stream (strength 0.5, no guidance), each (latent_feedback, image_feedback)
    in turn (changed live, then a reset). Returns {"rows": [...], "noise": ...}."""
    from dataclasses import replace

    from dreamcam.core.config import StreamConfig
    from dreamcam.core.stream import StreamDiffusion
    from dreamcam.engines.driver import StreamDriver

    tap = DecodeTap(modules.decode)
    stream = StreamDiffusion(components, StreamConfig(width=size, height=size, steps=1, strength=0.5,
                                                      cfg_type="none", prompt=prompt),
                             modules=replace(modules, decode=tap))
    driver = StreamDriver(stream, config=config)
    pool = camera_frames(static_scene(size, size), noise)
    n = len(pool)
    rows: list[dict] = [{"setting": "input (camera noise)", "flicker": round(flicker([pool[i % n] for i in range(frames)]), 3),
                         "fps": None}]
    try:
        for latent, image in settings:
            driver.update(latent_feedback=latent, image_feedback=image)
            driver.reset()
            for i in range(warmup):
                driver(pool[i % n])
            outs, latents, images = [], [], []
            for i in range(frames):
                outs.append(driver(pool[(warmup + i) % n]).copy())  # the driver reuses its buffers
                latents.append(tap.latent.clone())
                images.append(tap.image.clone())
            sync()
            start = time.perf_counter()
            for i in range(frames):
                driver(pool[i % n])
            seconds = time.perf_counter() - start
            status = driver.graph_status()
            rows.append({"setting": f"latent {latent:g}, image {image:g}", "latent_feedback": latent,
                         "image_feedback": image, "flicker": round(flicker(outs), 3),
                         "image_flicker": round(_mean_change(images, 127.5), 4),
                         "latent_flicker": round(_mean_change(latents), 5),
                         "fps": round(frames / seconds, 1), "captures": driver.graphed.captures,
                         "graph_error": status.error})
    finally:
        driver.close()
    plain = next((r for r in rows[1:] if not r["latent_feedback"] and not r["image_feedback"]), None)
    for r in rows[1:]:
        for key in ("image_flicker", "latent_flicker"):
            base = plain[key] if plain else 0.0
            r[key + "_share"] = round(r[key] / base, 3) if base else None
    return {"rows": rows, "size": size, "warmup": warmup, "frames": frames,
            "noise": {"sigma": noise.sigma, "shift_px": noise.shift_px, "pool": noise.pool}}


def report_lines(result: dict) -> list[str]:
    """The Markdown table: setting, flicker, fps."""
    if "rows" not in result:
        return [f"Flicker: {result.get('error') or result.get('skipped')}", ""]
    noise = result["noise"]
    lines = ["## Flicker with temporal feedback (static input, camera noise)", "",
             f"Static {result['size']}x{result['size']} scene + Gaussian sensor noise sigma {noise['sigma']} grey "
             f"levels per frame (sub-pixel shift {noise['shift_px']} px), 1-step img2img, strength 0.5, random-weight "
             f"models, {result.get('engine', '?')} engine + CUDA graph; flicker = mean |out_n - out_(n-1)| in grey "
             f"levels over {result['frames']} frames after "
             f"{result['warmup']} settling frames; these random models decode to almost black frames, so the "
             "uint8 number clips: image flicker = the same for the decoder's output before the clip (grey levels), "
             "latent flicker = for the output latent x0, each with its share of the no-feedback value; "
             "fps = host uint8 -> host uint8, one frame at a time.", "",
             "| setting | flicker (uint8) | image flicker, unclipped (share) | latent flicker (share) | fps |",
             "| --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        fps = "-" if r.get("fps") is None else f"{r['fps']:.1f}"
        lines.append(f"| {r['setting']} | {r['flicker']:.3f} | {_with_share(r, 'image_flicker', 3)} | "
                     f"{_with_share(r, 'latent_flicker', 4)} | {fps} |")
    return lines + [""]


def _with_share(row: dict, key: str, digits: int) -> str:
    if key not in row:
        return "-"
    share = row.get(key + "_share")
    return f"{row[key]:.{digits}f}" + (f" ({share:.2f})" if share is not None else "")
