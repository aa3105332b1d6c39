"""Virtual camera sink (pyvirtualcam). The runner paces it at its own fps and repeats the last
frame when nothing new is ready, so video apps always see a steady camera."""

from __future__ import annotations

import logging
import sys

import numpy as np

from .base import SinkError

log = logging.getLogger(__name__)

# The one v4l2loopback command of the project: README, docs/obs.md and doctor show this text
# (a test holds the docs to it). exclusive_caps=1 lets browsers (WebRTC) see the device.
V4L2LOOPBACK_INSTALL = "sudo apt install v4l2loopback-dkms"
V4L2LOOPBACK_LOAD = 'sudo modprobe v4l2loopback exclusive_caps=1 card_label="Dreamcam"'


def install_hint(platform: str | None = None) -> str:
    """What to install for a virtual camera on this platform."""
    platform = platform or sys.platform
    if platform.startswith("win"):
        return ("install OBS Studio (it brings 'OBS Virtual Camera'; start its virtual camera once) "
                "or Unity Capture (github.com/schellingb/UnityCapture, run Install.bat)")
    if platform == "darwin":
        return ("install OBS Studio 30 or newer and click 'Start Virtual Camera' once to install "
                "its camera extension")
    return f"install v4l2loopback and load it: `{V4L2LOOPBACK_INSTALL}` then `{V4L2LOOPBACK_LOAD}`"


class VirtualCameraSink:
    name = "vcam"
    repeat_last = True
    done = False  # a camera takes frames until the app stops

    def __init__(self, width: int, height: int, fps: float, *, backend: str | None = None,
                 device: str | None = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.backend, self.device = backend, device
        self._camera = None
        self.frames_written = 0

    def open(self) -> None:
        try:
            import pyvirtualcam
        except ImportError as exc:
            raise SinkError("virtual camera: the pyvirtualcam package is missing; "
                            "run `pip install pyvirtualcam` (or `pip install dreamcam[vcam]`)") from exc
        if self.backend and self.backend not in pyvirtualcam.camera.BACKENDS:
            known = ", ".join(pyvirtualcam.camera.BACKENDS) or "none"
            raise SinkError(f"virtual camera: unknown backend {self.backend!r} (known here: {known})")
        try:
            self._camera = pyvirtualcam.Camera(self.width, self.height, self.fps,
                                               fmt=pyvirtualcam.PixelFormat.RGB,
                                               backend=self.backend, device=self.device)
        except Exception as exc:
            raise SinkError(f"virtual camera: no backend could start ({_one_line(exc)}); "
                            f"{install_hint()}") from exc
        log.info("virtual camera %s (%s backend) at %dx%d %.0f fps", self._camera.device,
                 self._camera.backend, self.width, self.height, self.fps)

    @property
    def device_name(self) -> str:
        return self._camera.device if self._camera is not None else ""

    def write(self, image: np.ndarray) -> None:
        camera = self._camera
        if camera is None:
            return
        camera.send(image)
        self.frames_written += 1

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            camera.close()


def _one_line(exc: Exception) -> str:
    return " | ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
