"""Validated settings: what the user controls live (`StreamSettings`) and at start (`AppSettings`).

Both are frozen dataclasses made from the schema (plugin/schema.py: the fields, their defaults
and their checks live there, once). One `StreamSettings` value is always in force. Every change,
from OBS, the tray, the CLI or a config file, goes through `apply_changes`, which validates all
fields first and then returns a new value: nothing is ever applied half-way, and on error the
previous settings stay in force.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from .schema import ENGINES, Field, SettingsError, app_fields, live_fields, live_names, validate

STREAM_FIELDS = live_names()


class _Validated:
    """`__post_init__` of the generated dataclasses: every field through the schema's check,
    the kept value converted (2.0 -> 2, [1, 2] -> (1, 2), "none" -> None)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kept = validate(f.name, value)
            if kept is not value:
                object.__setattr__(self, f.name, kept)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def _dataclass(name: str, fields: tuple[Field, ...], doc: str) -> type:
    spec = [(f.name, Optional[f.python_type] if f.nullable else f.python_type,
             dataclasses.field(default=f.default, repr=not f.secret)) for f in fields]
    cls = dataclasses.make_dataclass(name, spec, bases=(_Validated,), frozen=True, namespace={"__doc__": doc})
    cls.__module__ = __name__
    return cls


StreamSettings = _dataclass("StreamSettings", live_fields(),
                            "Everything that may change while the stream runs; applied between two frames.")
AppSettings = _dataclass("AppSettings", app_fields(), "Chosen at start; changing one of these restarts the pipeline.")


def apply_changes(current: StreamSettings, changes: Mapping[str, Any]) -> tuple[StreamSettings, list[str]]:
    """Validate `changes` and return (new settings, names of unknown fields that were ignored).

    Raises SettingsError naming the first bad field; `current` is never modified.
    """
    unknown = sorted(str(k) for k in changes if k not in STREAM_FIELDS)
    known = {k: validate(k, v) for k, v in changes.items() if k in STREAM_FIELDS}
    return dataclasses.replace(current, **known), unknown


__all__ = ["AppSettings", "ENGINES", "STREAM_FIELDS", "SettingsError", "StreamSettings", "apply_changes"]
