"""What the runner calls per frame: `processor(image) -> image` plus `processor.update(**kw)`
between frames (the core's StreamDiffusion has this interface), and the mapping from the user's
StreamSettings to one core update."""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import numpy as np

from .settings import StreamSettings

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
    else:
        changes["t_index_list"] = None
        changes["strength"] = settings.strength
        changes["steps"] = settings.steps
    # the core disables its similarity filter with threshold None
    changes["similarity_threshold"] = settings.similarity_threshold if settings.similarity_filter else None
    changes["similarity_max_skip"] = settings.similarity_max_skip
    return changes


def accepted_kwargs(update: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """Drop keys the processor's `update` does not take (older or stand-in processors); when it
    takes no `steps`, (strength, steps > 1) becomes an explicit t_index_list."""
    try:
        params = inspect.signature(update).parameters
    except (TypeError, ValueError):
        return changes
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return changes
    changes = dict(changes)
    if "steps" not in params and changes.get("steps", 1) > 1 and changes.get("t_index_list") is None:
        from dreamcam.core.schedule import strength_to_t_index

        changes["t_index_list"] = list(strength_to_t_index(changes["strength"], changes["steps"]))
        changes.pop("strength", None)
    if changes.get("t_index_list") is None:
        changes.pop("t_index_list", None)
    return {k: v for k, v in changes.items() if k in params}


def fits_frames(processor: Any) -> bool:
    """True when the processor resizes any input to its own size (the core does, on the GPU)."""
    config = getattr(processor, "config", None)
    return all(hasattr(config, name) for name in ("width", "height", "resize"))
