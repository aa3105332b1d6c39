"""The algorithm's own limits for every stream parameter, as plain data (no torch), and the one
number check: finite, of the right kind, in range. `StreamConfig` validates against these; the
app's settings schema (plugin/schema.py) reads them, so the core and the app cannot disagree."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# ControlNet preprocessors by name (core/preprocess.py; `external`: the image of a second source)
PREPROCESSOR_NAMES = ("canny", "soft_edge", "passthrough", "depth", "external")
NUM_INDEXES = 50  # the LCM schedule's indexes 0..49 (index i = timestep 999 - 20 i)
CFG_TYPES = ("none", "full", "self", "initialize")
MODES = ("img2img", "txt2img")
RESIZE_POLICIES = ("crop", "letterbox", "stretch")
MAX_PROMPT_CHARS = 4000
BLEND_METHODS = ("linear", "slerp")  # prompt_blend, seed_blend and prompt transitions (core/blending.py)
MAX_BLEND_ITEMS = 8  # prompts of a prompt_blend, seeds of a seed_blend (core/weighted.py)


@dataclass(frozen=True)
class Range:
    """Closed interval of numbers; `integer` for whole numbers, `multiple_of` for sizes."""

    low: int | float
    high: int | float
    integer: bool = False
    multiple_of: int | None = None

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        text = f"{kind} from {self.low} to {self.high}"
        return text + (f", a multiple of {self.multiple_of}" if self.multiple_of else "")

    def problem(self, value: Any) -> str | None:
        """None when `value` is allowed, else the message (without the field name)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {self.describe()}, got {shown(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be {self.describe()}, got {shown(value)}"
        if self.integer and isinstance(value, float) and not value.is_integer():
            return f"must be {self.describe()}, got {shown(value)}"
        if not self.low <= value <= self.high:  # exact for ints of any size (no float conversion)
            return f"must be from {self.low} to {self.high}, got {shown(value)}"
        if self.multiple_of and int(value) % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}, got {shown(value)}"
        return None

    def parse(self, name: str, value: Any) -> int | float:
        """`value` as int (integer ranges, 2.0 -> 2) or float; ValueError("name: ...") if not allowed."""
        message = self.problem(value)
        if message:
            raise ValueError(f"{name}: {message}")
        return int(value) if self.integer else float(value)


def shown(value: Any, limit: int = 40) -> str:
    """A short repr for error lines (a 400-digit integer or a huge string stays one short line)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a {'negative ' if value < 0 else ''}number of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # e.g. a nesting too deep to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


STEPS = Range(1, 8, integer=True)  # also the number of t_index values
RANGES: dict[str, Range] = {
    "width": Range(32, 2048, integer=True, multiple_of=8),
    "height": Range(32, 2048, integer=True, multiple_of=8),
    "t_index": Range(0, NUM_INDEXES - 1, integer=True),  # each value of t_index_list
    "strength": Range(0.0, 1.0),
    "steps": STEPS,
    "frame_buffer_size": Range(1, 16, integer=True),
    "guidance_scale": Range(0.0, 20.0),
    "delta": Range(0.0, 5.0),
    "seed": Range(0, 2**31 - 1, integer=True),  # fits OBS's int fields, JSON and torch.Generator
    "similarity_threshold": Range(0.0, 1.0),
    "similarity_max_skip": Range(0, 1000, integer=True),
    "transition_frames": Range(0, 600, integer=True),
    "latent_feedback": Range(0.0, 1.0),  # share of the previous output latent in the new frame's latent
    "image_feedback": Range(0.0, 1.0),  # share of the previous output image in the new input image
}
