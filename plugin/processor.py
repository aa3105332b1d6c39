"""The one interface the runner calls per frame (`Processor`), its two implementations (the
core stream behind the engines' graph driver, and the stand-in `PassThrough`), and the mapping
from the user's StreamSettings to one core update."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np

from .conditioning import Conditioning
from .conditioning_loader import Outcome
from .settings import StreamSettings


class Work(Protocol):
    """A frame started on a processor: `done()` never waits, `result()` does (in submit order)."""

    def done(self) -> bool: ...

    def result(self) -> np.ndarray: ...


class Ready:
    """Work that is already finished."""

    def __init__(self, out: np.ndarray, skipped: bool = False) -> None:
        self._out, self.skipped = out, skipped

    def done(self) -> bool:
        return True

    def result(self) -> np.ndarray:
        return self._out


class Processor(ABC):
    """What the runner calls, and all it calls (no attribute probing):
    - `submit(image)`: start one frame (uint8 HxWx3; any size when `fits_frames`, else already
      at the configured size); results are collected in submit order;
    - `update(**core_update(settings))`: all settings at once, ValueError naming the field and
      nothing changed when one is bad;
    - `lanes`: how many frames the runner may keep uncollected; `frames_skipped`: frames the
      processor's own similarity filter skipped so far; `engine_name`; `graph_warning`: '' or the
      line saying the stream runs without a CUDA graph (and how much slower);
    - `condition(wanted, settings)`: the ControlNets, IP-Adapter and LoRAs the settings ask for
      (plugin/conditioning.py): numbers apply at once, new sources load in the background;
      `swap()`, between two frames: put in what finished loading, and say what happened."""

    engine_name: str = "none"
    fits_frames: bool = False  # True: resizes any input to its own size itself (the core, on its device)
    lanes: int = 1  # frames the runner may keep submitted and uncollected
    frames_skipped: int = 0  # frames its own similarity filter skipped so far
    graph_warning: str = ""  # '' or engines.graphed.uncaptured_message(...)

    @abstractmethod
    def submit(self, image: np.ndarray) -> Work: ...

    @abstractmethod
    def update(self, **changes: Any) -> None: ...

    def condition(self, wanted: Conditioning, settings: StreamSettings) -> None:
        """Follow the conditioning settings (never waits); this processor has none to load."""

    def swap(self) -> list[Outcome]:
        """Between two frames: install finished loads; the outcomes (loading, loaded, failed)."""
        return []

    def close(self) -> None:
        """Release what the processor holds (GPU graphs); the app calls it once, at stop."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.submit(image).result()


class PassThrough(Processor):
    """Stand-in processor: returns the input; accepts every update (an optional delay mimics work)."""

    engine_name = "passthrough"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.updates: list[dict[str, Any]] = []

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        return image

    def submit(self, image: np.ndarray) -> Work:
        return Ready(self(image))

    def update(self, **changes: Any) -> None:
        self.updates.append(changes)


class CoreProcessor(Processor):
    """The core's StreamDiffusion behind the engines' one graph driver (`StreamDriver`): the
    stream fits frames itself, keeps frames in flight where its engine allows, and reports
    whether its step runs as CUDA graphs."""

    fits_frames = True

    def __init__(self, driver: Any, engine_name: str, conditioner: Any = None) -> None:
        self.driver = driver
        self.engine_name = engine_name
        self.conditioner = conditioner  # plugin.conditioner.Conditioner, or None: no ControlNets, LoRAs, ...

    @property
    def stream(self) -> Any:
        return self.driver.stream

    @property
    def config(self) -> Any:
        """The core's StreamConfig in force."""
        return self.driver.stream.config

    @property
    def device(self) -> Any:
        return self.driver.stream.device

    def submit(self, image: np.ndarray) -> Work:
        return self.driver.submit(image)

    def update(self, **changes: Any) -> None:
        self.driver.update(**changes)

    @property
    def lanes(self) -> int:
        return self.driver.lanes

    @property
    def frames_skipped(self) -> int:
        return self.driver.stream.frames_skipped

    @property
    def graph_warning(self) -> str:
        return self.driver.graph_status().message

    def condition(self, wanted: Conditioning, settings: StreamSettings) -> None:
        if self.conditioner is not None:
            self.conditioner.condition(wanted, settings)

    def swap(self) -> list[Outcome]:
        return self.conditioner.swap() if self.conditioner is not None else []

    def close(self) -> None:
        if self.conditioner is not None:
            self.conditioner.close()
        self.driver.close()


def core_update(settings: StreamSettings) -> dict[str, Any]:
    """One update for the core from the settings in force (`paused` is the runner's job)."""
    changes: dict[str, Any] = {
        "width": settings.width,
        "height": settings.height,
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt,
        "guidance_scale": settings.guidance_scale,
        "delta": settings.delta,
        "seed": settings.seed,
        "cfg_type": settings.cfg_type,
        "transition_frames": settings.transition_frames,
    }
    for name in ("prompt_blend", "seed_blend", "blend_method", "latent_feedback", "image_feedback"):
        changes[name] = getattr(settings, name)  # StreamConfig fields of the same names
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
