"""Convenience: put Dreamcam's virtual camera into OBS's current scene as a video capture source,
through obs-websocket requests (the device is found by name in the source's own device list)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE_NAME = "Dreamcam"


@dataclass(frozen=True)
class CaptureKind:
    input_kind: str  # OBS input kind
    device_property: str  # the list property that selects the device


CAPTURE_KINDS = {
    "win32": CaptureKind("dshow_input", "video_device_id"),
    "darwin": CaptureKind("av_capture_input", "device"),
    "linux": CaptureKind("v4l2_input", "device_id"),
}
DEFAULT_DEVICE = {"win32": "OBS Virtual Camera", "darwin": "OBS Virtual Camera", "linux": "Dreamcam"}


class SceneError(RuntimeError):
    """The source could not be added; the text says why and what to check."""


def capture_kind(platform: str = sys.platform) -> CaptureKind:
    return CAPTURE_KINDS["linux" if platform.startswith("linux") else platform]


def add_capture_source(req: Any, device_match: str, *, kind: CaptureKind | None = None,
                       source_name: str = SOURCE_NAME) -> str:
    """Add a capture source showing the first device whose name contains `device_match` to the
    current program scene. Returns the device's name. An existing input named `source_name` is
    left as it is (idempotent). Raises SceneError (and leaves the scene unchanged) when no device
    matches. `req` is an obsws_python.ReqClient."""
    kind = kind or capture_kind()
    inputs = req.get_input_list().inputs
    if any(item.get("inputName") == source_name for item in inputs):
        return source_name
    scene = req.get_current_program_scene().current_program_scene_name
    req.create_input(scene, source_name, kind.input_kind, {}, True)
    try:
        items = req.get_input_properties_list_property_items(source_name, kind.device_property).property_items
        names = [str(item.get("itemName", "")) for item in items]
        match = next((item for item in items if device_match.lower() in str(item.get("itemName", "")).lower()),
                     None)
        if match is None:
            seen = ", ".join(n for n in names if n) or "no devices at all"
            raise SceneError(f"OBS sees no video device named like {device_match!r} (it sees: {seen}). "
                             "Start `dreamcam run` first so its virtual camera exists, or pass the "
                             "device name.")
        req.set_input_settings(source_name, {kind.device_property: match.get("itemValue")}, True)
        return str(match.get("itemName"))
    except Exception:
        try:
            req.remove_input(source_name)
        except Exception:
            pass
        raise


def obs_script_path() -> Path:
    """The OBS panel script: obs_scripts/ of a checkout, or dreamcam/obs_scripts/ when installed."""
    return Path(__file__).resolve().parent.parent / "obs_scripts" / "dreamcam_obs.py"


def obs_schema_path() -> Path:
    """The settings schema the OBS script reads; it must stay beside the script."""
    return obs_script_path().with_name("dreamcam_schema.json")


def copy_obs_script(folder: str | Path) -> Path:
    """Copy the OBS panel script and its schema into `folder` (created); returns the script's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(obs_schema_path(), folder / obs_schema_path().name)
    return Path(shutil.copy2(obs_script_path(), folder / "dreamcam_obs.py"))
