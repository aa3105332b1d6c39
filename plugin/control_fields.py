"""The live settings as OSC and MIDI see them: the one place where those surfaces read the
settings schema (name, type, range or choices, label, help) and turn values to and from the
0..1 range of faders and MIDI controllers."""

from __future__ import annotations

import math
from typing import Any, Tuple

from .schema import Field, known_names, live_fields
from .settings import SettingsError

NUMBER_TYPES = ("int", "float")


def control_fields() -> Tuple[Field, ...]:
    """The live settings a controller may set directly (the preset name is set by loading one)."""
    return tuple(f for f in live_fields() if f.name != "preset")


def field_named(name: str) -> Field:
    for f in control_fields():
        if f.name == name:
            return f
    known = known_names(f.name for f in control_fields())
    raise SettingsError(str(name)[:60], f"not a setting a controller can set (known: {known})")


def is_ranged(f: Field) -> bool:
    """Numbers with a range: what a fader, a knob or a MIDI CC can move."""
    return f.type in NUMBER_TYPES and f.range is not None


def ranged_fields() -> Tuple[Field, ...]:
    return tuple(f for f in control_fields() if is_ranged(f))


def toggle_fields() -> Tuple[Field, ...]:
    return tuple(f for f in control_fields() if f.type == "bool")


def from_unit(f: Field, position: Any) -> int | float:
    """The field's value at `position` (0..1) of its range; whole-number fields round (sizes to their
    multiple). A position outside 0..1 or not a finite number is refused (nothing is clamped silently)."""
    if not is_ranged(f):
        raise SettingsError(f.name, "has no range to scale a 0..1 value to")
    if isinstance(position, bool) or not isinstance(position, (int, float)) or not math.isfinite(position) \
            or not 0.0 <= position <= 1.0:
        raise SettingsError(f.name, f"a normalised value must be a number from 0 to 1, got {position!r}")
    low, high, step = f.range.low, f.range.high, f.range.multiple_of or 1
    value = low + float(position) * (high - low)
    return int(round(value / step)) * step if f.range.integer else min(max(value, low), high)


def to_unit(f: Field, value: int | float) -> float:
    """Where `value` lies in the field's range, 0..1 (for faders that show feedback)."""
    low, high = f.range.low, f.range.high
    return 0.0 if high == low else (float(value) - low) / (high - low)
