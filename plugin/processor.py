"""What the runner calls per frame: `processor(image) -> image` plus `processor.update(**kw)`
between frames (the core's StreamDiffusion has this interface), and the mapping from the user's
StreamSettings to one core update."""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import numpy as np

from .settings import StreamSettings

NUM_TRAIN_INDICES = 50  # t_index values run 0..49 (see settings.StreamSettings.t_index_list)


class Processor(Protocol):
    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def update(self, **changes: Any) -> None: ...


class PassThrough:
    """Stand-in processor: returns the input; accepts every update (an optional delay mimics work)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.updates: list[dict[str, Any]] = []

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        return image

    def update(self, **changes: Any) -> None:
        self.updates.append(changes)


def strength_to_t_index_list(strength: float, steps: int) -> list[int]:
    """`steps` indices spread from where `strength` starts the denoising to the last one.

    Strength 1 starts from pure noise (index 0); strength near 0 starts near the end (little change).
    """
    start = min(NUM_TRAIN_INDICES - 1, int(round((1.0 - strength) * (NUM_TRAIN_INDICES - 1))))
    if steps <= 1:
        return [start]
    span = NUM_TRAIN_INDICES - 1 - start
    picked = sorted({start + round(i * span / steps) for i in range(steps)})
    return picked


def core_update(settings: StreamSettings) -> dict[str, Any]:
    """One update for the core from the settings in force (`paused` is the runner's job)."""
    changes: dict[str, Any] = {
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt,
        "guidance_scale": settings.guidance_scale,
        "delta": settings.delta,
        "seed": settings.seed,
        "cfg_type": settings.cfg_type,
        "transition_frames": settings.transition_frames,
    }
    if settings.t_index_list is not None:
        changes["t_index_list"] = list(settings.t_index_list)
    elif settings.steps > 1:
        changes["t_index_list"] = strength_to_t_index_list(settings.strength, settings.steps)
    else:
        changes["strength"] = settings.strength
    if settings.similarity_filter:
        changes["similarity_threshold"] = settings.similarity_threshold
        changes["similarity_max_skip"] = settings.similarity_max_skip
    else:
        changes["similarity_threshold"] = 0.0  # never similar enough to skip
        changes["similarity_max_skip"] = 0
    return changes


def accepted_kwargs(update: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """Drop keys the processor's `update` does not take (older or stand-in processors)."""
    try:
        params = inspect.signature(update).parameters
    except (TypeError, ValueError):
        return changes
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return changes
    return {k: v for k, v in changes.items() if k in params}
