"""`StreamConfig`: everything the stream needs to run, validated as a whole."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .schedule import NUM_INDEXES, strength_to_t_index

CFG_TYPES = ("none", "full", "self", "initialize")
MODES = ("img2img", "txt2img")
RESIZE_POLICIES = ("crop", "letterbox", "stretch")
MAX_PROMPT_CHARS = 4000


@dataclass(frozen=True)
class StreamConfig:
    """Stream settings. `t_index_list` wins over (`strength`, `steps`) when given."""

    width: int = 512
    height: int = 512
    t_index_list: tuple[int, ...] | None = None
    strength: float = 0.5
    steps: int = 1
    frame_buffer_size: int = 1
    cfg_type: str = "self"
    guidance_scale: float = 1.2
    delta: float = 1.0
    seed: int = 2
    prompt: str = ""
    negative_prompt: str = ""
    do_add_noise: bool = True
    mode: str = "img2img"
    similarity_threshold: float | None = None  # None disables the similarity filter
    similarity_max_skip: int | None = 10  # None: no limit on consecutive skips
    transition_frames: int = 0
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.t_index_list is not None:
            object.__setattr__(self, "t_index_list", tuple(self.t_index_list))
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name))

    @property
    def indexes(self) -> tuple[int, ...]:
        """The t_index values in force (explicit list, else derived from strength and steps)."""
        if self.t_index_list is not None:
            return self.t_index_list
        return strength_to_t_index(self.strength, self.steps)

    @property
    def num_steps(self) -> int:
        return len(self.indexes)

    def replace(self, **changes: Any) -> "StreamConfig":
        """A new validated config; raises ValueError naming the first bad field."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown setting")
        return dataclasses.replace(self, **changes)


def _fail(name: str, message: str) -> None:
    raise ValueError(f"{name}: {message}")


def _num(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        _fail(name, f"must be {'a whole number' if integer else 'a number'} from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        _fail(name, f"must be from {low} to {high}, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(name, f"must be one of {', '.join(allowed)}, got {value!r}")


def _check(name: str, value: Any) -> None:
    if name in ("width", "height"):
        _num(name, value, 32, 4096, integer=True)
        if value % 8:
            _fail(name, f"must be a multiple of 8, got {value}")
    elif name == "t_index_list":
        if value is None:
            return
        if not 1 <= len(value) <= 8:
            _fail(name, f"must hold 1 to 8 step indices, got {len(value)}")
        for v in value:
            _num(name, v, 0, NUM_INDEXES - 1, integer=True)
        if list(value) != sorted(set(value)):
            _fail(name, f"must be strictly increasing, got {list(value)}")
    elif name == "strength":
        _num(name, value, 0.0, 1.0)
    elif name == "steps":
        _num(name, value, 1, 8, integer=True)
    elif name == "frame_buffer_size":
        _num(name, value, 1, 16, integer=True)
    elif name == "cfg_type":
        _choice(name, value, CFG_TYPES)
    elif name == "guidance_scale":
        _num(name, value, 0.0, 50.0)
    elif name == "delta":
        _num(name, value, 0.0, 10.0)
    elif name == "seed":
        _num(name, value, 0, 2**63 - 1, integer=True)
    elif name in ("prompt", "negative_prompt"):
        if not isinstance(value, str):
            _fail(name, f"must be text, got {type(value).__name__}")
        if len(value) > MAX_PROMPT_CHARS:
            _fail(name, f"must be at most {MAX_PROMPT_CHARS} characters, got {len(value)}")
    elif name == "do_add_noise":
        if not isinstance(value, bool):
            _fail(name, f"must be true or false, got {value!r}")
    elif name == "mode":
        _choice(name, value, MODES)
    elif name == "similarity_threshold":
        if value is not None:
            _num(name, value, 0.0, 1.0)
    elif name == "similarity_max_skip":
        if value is not None:
            _num(name, value, 0, 100000, integer=True)
    elif name == "transition_frames":
        _num(name, value, 0, 10000, integer=True)
    elif name == "resize":
        _choice(name, value, RESIZE_POLICIES)
