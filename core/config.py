"""`StreamConfig`: everything the stream needs to run, validated as a whole."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .limits import BLEND_METHODS, CFG_TYPES, MAX_PROMPT_CHARS, MODES, RANGES, RESIZE_POLICIES, STEPS, shown
from .schedule import strength_to_t_index
from .weighted import PROMPT_BLEND, SEED_BLEND


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
    prompt_blend: str = ""  # "a : 0.7 | b : 0.3" replaces `prompt` when set ("" = off; core/weighted.py)
    seed_blend: str = ""  # "2:0.6, 7:0.4" replaces `seed` for the noise when set ("" = off)
    blend_method: str = "linear"  # both blends and prompt transitions: linear | slerp
    latent_feedback: float = 0.0  # img2img: z = (1 - a) z + a x0_prev before noising
    image_feedback: float = 0.0  # img2img: image = (1 - b) image + b previous output before encoding

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _check(f.name, getattr(self, f.name))
            if value is not getattr(self, f.name):
                object.__setattr__(self, f.name, value)  # 2.0 -> 2 for whole-number fields

    @property
    def indexes(self) -> tuple[int, ...]:
        """The t_index values in force (explicit list, else derived from strength and steps)."""
        if self.t_index_list is not None:
            return self.t_index_list
        return strength_to_t_index(self.strength, self.steps)

    @property
    def num_steps(self) -> int:
        return len(self.indexes)

    @property
    def unet_batch(self) -> int:
        """Rows of one UNet call: steps x frames (none, self), twice that (full: [uncond, cond]),
        one more row per frame (initialize: the newest frames' negative pass)."""
        n, fbs = self.num_steps, self.frame_buffer_size
        return {"none": n * fbs, "self": n * fbs, "full": 2 * n * fbs, "initialize": (n + 1) * fbs}[self.cfg_type]

    @property
    def prompt_items(self) -> tuple[tuple[str, float], ...]:
        """(prompt, weight) pairs of `prompt_blend`; () when it is off."""
        return PROMPT_BLEND.parse("prompt_blend", self.prompt_blend)

    @property
    def seed_items(self) -> tuple[tuple[int, float], ...]:
        """(seed, weight) pairs of `seed_blend`; () when it is off."""
        return SEED_BLEND.parse("seed_blend", self.seed_blend)

    def replace(self, **changes: Any) -> "StreamConfig":
        """A new validated config; raises ValueError naming the first bad field."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown setting")
        return dataclasses.replace(self, **changes)


def _fail(name: str, message: str) -> None:
    raise ValueError(f"{name}: {message}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        _fail(name, f"must be one of {', '.join(allowed)}, got {shown(value)}")


def _check(name: str, value: Any) -> Any:
    """The value to keep (numbers converted to their kind); ValueError naming the field if bad."""
    if name == "t_index_list":
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            _fail(name, f"must be a list of {STEPS.low} to {STEPS.high} step indices, got {shown(value)}")
        if not STEPS.low <= len(value) <= STEPS.high:
            _fail(name, f"must hold {STEPS.low} to {STEPS.high} step indices, got {len(value)}")
        value = tuple(RANGES["t_index"].parse(name, v) for v in value)
        if list(value) != sorted(set(value)):
            _fail(name, f"must be strictly increasing, got {list(value)}")
        return value
    if name in ("similarity_threshold", "similarity_max_skip") and value is None:
        return None  # off / no limit
    if name in RANGES:
        return RANGES[name].parse(name, value)
    if name in ("prompt", "negative_prompt"):
        if not isinstance(value, str):
            _fail(name, f"must be text, got {type(value).__name__}")
        if len(value) > MAX_PROMPT_CHARS:
            _fail(name, f"must be at most {MAX_PROMPT_CHARS} characters, got {len(value)}")
    elif name == "do_add_noise":
        if not isinstance(value, bool):
            _fail(name, f"must be true or false, got {shown(value)}")
    elif name == "cfg_type":
        _choice(name, value, CFG_TYPES)
    elif name == "mode":
        _choice(name, value, MODES)
    elif name == "resize":
        _choice(name, value, RESIZE_POLICIES)
    elif name == "blend_method":
        _choice(name, value, BLEND_METHODS)
    elif name in ("prompt_blend", "seed_blend"):
        if isinstance(value, str) and len(value) > MAX_PROMPT_CHARS:
            _fail(name, f"must be at most {MAX_PROMPT_CHARS} characters, got {len(value)}")
        (PROMPT_BLEND if name == "prompt_blend" else SEED_BLEND).parse(name, value)
    return value
