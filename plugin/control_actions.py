"""What a button on a controller does (OSC and MIDI alike): load a preset by name, the next or
previous preset, a new random seed, toggle a switch, set a field to a fixed value. Every action
is one `SettingsStore.apply` (all-or-nothing; SettingsError names the field, nothing changed)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from . import config
from .control import SettingsStore
from .control_fields import field_named
from .settings import SettingsError, StreamSettings

ACTION_KINDS = ("preset", "preset_step", "random_seed", "toggle", "set")
NEXT, PREVIOUS = "next", "previous"


@dataclass(frozen=True)
class Action:
    """`preset` (value: name), `preset_step` (value: +1 or -1), `random_seed`, `toggle` (field),
    `set` (field = value)."""

    kind: str
    field: str = ""
    value: Any = None

    def describe(self) -> str:
        if self.kind == "preset":
            return f"preset:{self.value}"
        if self.kind == "preset_step":
            return f"preset:{NEXT if self.value > 0 else PREVIOUS}"
        if self.kind == "random_seed":
            return "seed:random"
        if self.kind == "toggle":
            return self.field
        return f"{self.field}={json.dumps(self.value)}"


def parse_action(text: Any, where: str) -> Action:
    """An action from its text (MIDI mapping): "preset:NAME", "preset:next", "preset:previous",
    "seed:random", "FIELD" (a true/false field: toggle) or "FIELD=VALUE" (VALUE as JSON, else text)."""
    if not isinstance(text, str) or not text.strip():
        raise SettingsError(where, f"expected an action such as \"preset:Ink\", \"paused\" or \"seed:random\", got {text!r}")
    text = text.strip()
    head, colon, rest = text.partition(":")
    if colon and head == "preset":
        if rest in (NEXT, PREVIOUS):
            return Action("preset_step", value=1 if rest == NEXT else -1)
        return Action("preset", value=rest)
    if colon and head == "seed" and rest == "random":
        return Action("random_seed")
    name, eq, value = text.partition("=")
    name = name.strip()
    try:
        f = field_named(name)
    except SettingsError as exc:
        raise SettingsError(where, f"{exc}; or use preset:NAME, preset:next, preset:previous, seed:random") from None
    if eq:
        return Action("set", f.name, _value(value.strip()))
    if f.type != "bool":
        raise SettingsError(where, f"{name!r} is not a true/false setting to toggle; write {name}=VALUE to set a value")
    return Action("toggle", f.name)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_action(store: SettingsStore, action: Action, origin: str) -> StreamSettings:
    """Carry out one action as one update; SettingsError leaves everything as it was."""
    if action.kind == "preset":
        return load_preset(store, action.value, origin)
    if action.kind == "preset_step":
        return store.apply(config.load_preset(step_preset(store.current.preset, action.value)), origin)
    if action.kind == "random_seed":
        return store.apply({"seed": new_seed(store.current.seed)}, origin)
    if action.kind == "toggle":
        return store.apply({action.field: not getattr(store.current, action.field)}, origin)
    if action.kind == "set":
        return store.apply({action.field: action.value}, origin)
    raise SettingsError("action", f"unknown action {action.kind!r} (known: {', '.join(ACTION_KINDS)})")


def load_preset(store: SettingsStore, name: Any, origin: str) -> StreamSettings:
    """Apply a saved preset's values (and its name) as one update."""
    if not isinstance(name, str):
        raise SettingsError("preset", f"expected a preset name, got {name!r}")
    return store.apply(config.load_preset(name), origin)


def step_preset(current: str | None, step: int) -> str:
    """The saved preset `step` places after `current` in name order, wrapping around (the first
    or last one when `current` is not a saved preset)."""
    names = config.list_presets()
    if not names:
        raise SettingsError("preset", f"no presets saved yet in {config.presets_dir()} (dreamcam preset save NAME ...)")
    if current not in names:
        return names[0] if step > 0 else names[-1]
    return names[(names.index(current) + step) % len(names)]


def new_seed(current: int) -> int:
    """A random seed in the seed field's range, other than `current`."""
    seed_range = field_named("seed").range
    while True:
        seed = random.randint(int(seed_range.low), int(seed_range.high))
        if seed != current:
            return seed
