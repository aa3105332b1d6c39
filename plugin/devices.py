"""What `dreamcam devices` lists: monitors (mss), cameras (OpenCV), virtual camera backends."""

from __future__ import annotations

from typing import Any


def monitors() -> tuple[list[dict[str, int]], str]:
    """(monitors with index 1.. ; index 0 is all of them together, error text)."""
    try:
        from .sources.screen import _new_mss

        grabber = _new_mss()
    except Exception as exc:
        return [], f"screen capture unavailable: {exc}"
    try:
        return [dict(m, index=i) for i, m in enumerate(grabber.monitors)], ""
    finally:
        grabber.close()


def cameras(max_index: int = 6) -> tuple[list[dict[str, Any]], str]:
    try:
        import cv2
    except ImportError:
        return [], "OpenCV is missing: pip install opencv-python"
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:
        pass
    from .sources.camera import list_cameras

    return list_cameras(max_index), ""


def vcam_backends(probe: bool = True) -> tuple[list[dict[str, Any]], str]:
    """Registered pyvirtualcam backends; with `probe`, whether each one can start right now."""
    try:
        import pyvirtualcam
    except ImportError:
        return [], "pyvirtualcam is missing: pip install pyvirtualcam"
    found = []
    for name in pyvirtualcam.camera.BACKENDS:
        entry: dict[str, Any] = {"backend": name, "works": None, "detail": ""}
        if probe:
            try:
                with pyvirtualcam.Camera(64, 64, 30, backend=name) as cam:
                    entry.update(works=True, detail=cam.device)
            except Exception as exc:
                entry.update(works=False, detail=" ".join(str(exc).split()))
        found.append(entry)
    return found, ""
