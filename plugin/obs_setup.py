"""What `dreamcam doctor` can tell about the OBS on this computer from its config folder: the
version that last ran, the Python it loads scripts with, whether the Dreamcam panel is in the
current scene collection, and whether that panel can import obsws-python. Reads files only."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SCRIPT_NAME = "dreamcam_obs.py"
SCHEMA_NAME = "dreamcam_schema.json"
VENDOR_DIR = "dreamcam_vendor"
# Pythons OBS accepts on Windows and macOS (64-bit): OBS 28/29 load 3.6-3.10, OBS 30+ up to
# 3.12; obsws-python needs 3.9 or newer.
OBSWS_MIN_PYTHON = (3, 9)


def config_dir(platform: str = sys.platform) -> Path:
    """OBS's config folder (XDG_CONFIG_HOME on Linux, APPDATA on Windows)."""
    if platform.startswith("win"):
        return Path(os.environ.get("APPDATA", "")) / "obs-studio"
    if platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "obs-studio"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "obs-studio"


def _ini(path: Path) -> configparser.RawConfigParser:
    ini = configparser.RawConfigParser(strict=False)
    try:
        ini.read_string(path.read_text(encoding="utf-8-sig", errors="replace"))
    except (OSError, configparser.Error):
        pass
    return ini


def _setting(folder: Path, section: str, key: str) -> str:
    """OBS 31+ keeps user settings in user.ini, earlier versions in global.ini."""
    for name in ("user.ini", "global.ini"):
        ini = _ini(folder / name)
        if ini.has_option(section, key):
            return ini.get(section, key)
    return ""


def obs_version(folder: Path) -> Optional[tuple[int, int, int]]:
    """The OBS version that last ran with this config ([General] LastVersion, packed)."""
    raw = _setting(folder, "General", "LastVersion")
    try:
        packed = int(raw)
    except ValueError:
        return None
    return packed >> 24, (packed >> 16) & 0xFF, packed & 0xFFFF


def python_range(version: Optional[tuple[int, int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The Pythons this OBS loads on Windows/macOS, narrowed to what obsws-python runs on."""
    newest = (3, 12) if version is None or version[0] >= 30 else (3, 10)
    return OBSWS_MIN_PYTHON, newest


@dataclass(frozen=True)
class PanelInstall:
    collection: str  # the scene collection's name
    script: Optional[Path]  # the panel script the collection loads, or None
    schema_beside: bool
    vendor: Optional[Path]  # a dreamcam_vendor folder holding obsws_python next to the script


def panel_install(folder: Path) -> Optional[PanelInstall]:
    """The Dreamcam panel in OBS's current scene collection; None when OBS has no collection."""
    name = _setting(folder, "Basic", "SceneCollectionFile") or _setting(folder, "Basic", "SceneCollection")
    scenes = folder / "basic" / "scenes"
    path = scenes / f"{name}.json"
    if not name or not path.is_file():
        found = sorted(scenes.glob("*.json")) if scenes.is_dir() else []
        if not found:
            return None
        path, name = found[0], found[0].stem
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        scripts = data.get("modules", {}).get("scripts-tool", []) or []
    except (OSError, ValueError, AttributeError):
        scripts = []
    for entry in scripts:
        script = Path(str(entry.get("path", ""))) if isinstance(entry, dict) else None
        if script is not None and script.name == SCRIPT_NAME:
            vendor = script.parent / VENDOR_DIR
            return PanelInstall(name, script, (script.parent / SCHEMA_NAME).is_file(),
                                vendor if (vendor / "obsws_python").is_dir() else None)
    return PanelInstall(name, None, False, None)


def windows_python(folder: Path) -> Optional[Path]:
    """The folder set in Tools > Scripts > Python Settings (Windows and macOS)."""
    raw = _setting(folder, "Python", "Path64bit")
    return Path(raw) if raw else None


def python_version_of(folder: Path) -> Optional[tuple[int, int]]:
    """3.X of a python.org install folder (python3X.dll) or framework (Versions/3.X)."""
    for dll in folder.glob("python3*.dll"):
        match = re.fullmatch(r"python3(\d+)\.dll", dll.name)
        if match:
            return 3, int(match.group(1))
    match = re.search(r"(\d)\.(\d+)$", str(folder).rstrip("/\\"))
    return (int(match.group(1)), int(match.group(2))) if match else None


def system_python_has_obsws(python: str = "/usr/bin/python3") -> Optional[bool]:
    """Linux OBS runs scripts in the system Python: can it import obsws_python? None: no such Python."""
    if not Path(python).is_file():
        return None
    try:
        done = subprocess.run([python, "-c", "import obsws_python"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode == 0
