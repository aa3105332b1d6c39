"""Settings from a TOML file, overridden from the command line, and named presets in the user's
config folder (DREAMCAM_CONFIG_DIR overrides the folder, e.g. for tests).

File layout (every key optional):

    [app]              # AppSettings: source, sink, model, engine, fps, ...
    source = "camera:0"
    [stream]           # StreamSettings: prompt, strength, steps, guidance_scale, seed, width, height, ...
    prompt = "a watercolor painting"
    preset = "watercolor"   # start from a saved preset, then apply the keys above
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

from .schema import app_names, known_names, live_names, preset_names
from .settings import AppSettings, SettingsError, StreamSettings, apply_changes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_ENV = "DREAMCAM_CONFIG_DIR"
APP_FIELDS = app_names()  # the keys of [app]
STREAM_KEYS = live_names()  # the keys of [stream]
PRESET_FIELDS = preset_names()  # what a preset holds (not `paused`, not the name of another preset)
PRESET_NAME = re.compile(r"^[\w][\w .\-]{0,63}$")


def config_dir() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("dreamcam", appauthor=False))


def presets_dir() -> Path:
    return config_dir() / "presets"


# ---- TOML file + overrides -------------------------------------------------------------------
def load_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(app table, stream table) of a TOML file; clear errors for a missing or broken file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError("config", f"file {path} does not exist") from None
    except IsADirectoryError:
        raise SettingsError("config", f"{path} is a folder; give the path of a .toml file") from None
    except UnicodeDecodeError:
        raise SettingsError("config", f"{path} is not a text file; give the path of a .toml file") from None
    except OSError as exc:
        raise SettingsError("config", f"cannot read {path} ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise SettingsError("config", f"{path} is not valid TOML ({_one_line(exc)})") from None
    unknown = sorted(set(data) - {"app", "stream", "midi"})  # [midi]: read by plugin/midi_map.py
    if unknown:
        raise SettingsError("config", f"{path}: unknown table [{unknown[0]}]; use [app], [stream] and [midi]")
    for table in ("app", "stream"):
        if not isinstance(data.get(table, {}), dict):
            raise SettingsError("config", f"{path}: {table} must be a table ([{table}] with key = value lines)")
    app, stream = dict(data.get("app", {})), dict(data.get("stream", {}))
    live = sorted(set(app) & STREAM_KEYS)  # e.g. width and height, start-only ([app]) before they changed live
    if live:
        raise SettingsError(live[0], f"{path}: {live[0]} is a live setting: move it from [app] to [stream]")
    return app, stream


def build_app_settings(*layers: Mapping[str, Any]) -> AppSettings:
    """AppSettings from defaults + layers (file, then command line); None values are skipped."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    unknown = sorted(set(merged) - APP_FIELDS)
    if unknown:
        raise SettingsError(unknown[0], f"unknown app setting (known: {known_names(APP_FIELDS)})")
    try:
        return AppSettings(**merged)
    except TypeError as exc:
        raise SettingsError("app", str(exc)) from None


def build_stream_settings(*layers: Mapping[str, Any]) -> StreamSettings:
    """StreamSettings from defaults + layers; a `preset` key loads that preset first."""
    settings = StreamSettings()
    for layer in layers:
        layer = {k: v for k, v in layer.items() if v is not None}
        name = layer.get("preset")
        if name:
            settings, _ = apply_changes(settings, load_preset(name))
        settings, unknown = apply_changes(settings, layer)
        if unknown:
            raise SettingsError(unknown[0], f"unknown stream setting (known: {known_names(STREAM_KEYS)})")
    return settings


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if not isinstance(exc, RecursionError) else "nested too deeply"


# ---- presets ---------------------------------------------------------------------------------
def _preset_path(name: str) -> Path:
    if not isinstance(name, str) or not PRESET_NAME.match(name):
        raise SettingsError("preset", f"name must be 1 to 64 letters, digits, spaces, '.', '_' or '-', got {name!r}")
    return presets_dir() / f"{name}.json"


def save_preset(name: str, settings: StreamSettings) -> Path:
    path = _preset_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in settings.as_dict().items() if k in PRESET_FIELDS}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
    tmp.replace(path)
    return path


def load_preset(name: str) -> dict[str, Any]:
    """The preset's values (validated) plus `preset: name`; SettingsError if missing or bad."""
    path = _preset_path(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(list_presets()) or "none saved yet"
        raise SettingsError("preset", f"no preset named {name!r} (known: {known})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a 5000-digit number, deep nesting
        raise SettingsError("preset", f"{path} is broken ({_one_line(exc)})") from None
    except OSError as exc:
        raise SettingsError("preset", f"cannot read {path} ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise SettingsError("preset", f"{path} must hold an object")
    unknown = sorted(str(k) for k in data if k not in STREAM_KEYS)  # older files may hold `paused`: ignored
    if unknown:
        raise SettingsError(unknown[0], f"unknown preset setting in {path} (known: {known_names(PRESET_FIELDS)})")
    data = {k: v for k, v in data.items() if k in PRESET_FIELDS}
    try:
        apply_changes(StreamSettings(), data)  # validate everything before anyone uses it
    except SettingsError as exc:
        raise SettingsError(exc.field, f"{exc.message} (in preset {name!r}, {path})") from None
    data["preset"] = name
    return data


def list_presets() -> list[str]:
    folder = presets_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def delete_preset(name: str) -> bool:
    path = _preset_path(name)
    if path.exists():
        path.unlink()
        return True
    return False
