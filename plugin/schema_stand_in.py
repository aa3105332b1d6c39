"""TEMPORARY stand-in for plugin/schema.py (branch `schema`) with the subset of its API that
plugin/control_fields.py reads; deleted when that branch is merged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple


@dataclass(frozen=True)
class Range:
    low: int | float
    high: int | float
    integer: bool = False


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    default: Any
    live: bool
    label: str
    help: str
    range: Optional[Range] = None
    choices: Tuple[str, ...] = ()
    nullable: bool = False
    max_chars: int = 4000

    def allowed(self) -> str:
        if self.type == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.type in ("int", "float"):
            kind = "a whole number" if self.range.integer else "a number"
            text = f"{kind} from {self.range.low} to {self.range.high}"
        elif self.type == "int_list":
            text = f"1 to 8 increasing whole numbers from {self.range.low} to {self.range.high}"
        elif self.type == "bool":
            text = "true or false"
        else:
            text = f"text of at most {self.max_chars} characters"
        return text + (" or none" if self.nullable else "")


def _f(name, type, default, label, help, **extra) -> Field:
    return Field(name, type, default, True, label, help, **extra)


SCHEMA: Tuple[Field, ...] = (
    _f("prompt", "text", "a vivid watercolor painting, soft light, highly detailed", "Prompt",
       "What the output should look like."),
    _f("negative_prompt", "text", "blurry, low quality, deformed", "Negative prompt", "What to avoid."),
    _f("strength", "float", 0.5, "Strength", "0 keeps the input, 1 ignores it.", range=Range(0.0, 1.0)),
    _f("steps", "int", 1, "Steps", "Denoising steps.", range=Range(1, 8, True)),
    _f("t_index_list", "int_list", None, "Step indices", "Explicit step indices.", range=Range(0, 49, True),
       nullable=True),
    _f("guidance_scale", "float", 1.2, "Guidance scale", "How strongly the prompt steers.",
       range=Range(0.0, 20.0)),
    _f("cfg_type", "choice", "self", "Guidance type", "none, full, self or initialize.",
       choices=("none", "full", "self", "initialize")),
    _f("delta", "float", 1.0, "Delta", "Residual guidance weight.", range=Range(0.0, 5.0)),
    _f("seed", "int", 2, "Seed", "Noise seed.", range=Range(0, 2**31 - 1, True)),
    _f("transition_frames", "int", 0, "Prompt transition", "Frames.", range=Range(0, 600, True)),
    _f("similarity_filter", "bool", True, "Similarity filter", "Skip frames that barely changed."),
    _f("similarity_threshold", "float", 0.98, "Similarity threshold", "Threshold.", range=Range(0.0, 1.0)),
    _f("similarity_max_skip", "int", 10, "Max skip", "Max skipped in a row.", range=Range(0, 1000, True)),
    _f("paused", "bool", False, "Pause", "Pass the input through unchanged."),
    _f("preset", "text", None, "Preset", "Preset name.", nullable=True),
)


def live_fields() -> Tuple[Field, ...]:
    return tuple(f for f in SCHEMA if f.live)
