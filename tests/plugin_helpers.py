"""Helpers for the plugin tests: a recording pyvirtualcam backend (registered with
pyvirtualcam.register_backend, so the real pyvirtualcam.Camera path runs), a source that can be
unplugged, and small waits."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from dreamcam.plugin.sources.pattern import PatternSource
from dreamcam.plugin.sources import SourceError

BACKEND = "dreamcam-test-recorder"


class RecordingBackend:
    """Keeps every frame pyvirtualcam sends, with the time it arrived."""

    instances: list["RecordingBackend"] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.frames: list[tuple[float, np.ndarray]] = []
        self.closed = 0
        self.sent_after_close = 0
        self._lock = threading.Lock()
        RecordingBackend.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        with self._lock:
            if self.closed:
                self.sent_after_close += 1
            self.frames.append((time.monotonic(), frame.reshape(self.height, self.width, 3).copy()))

    def close(self) -> None:
        self.closed += 1

    def device(self) -> str:
        return "Dreamcam test recorder"

    def native_fourcc(self):
        return None

    def snapshot(self) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            return list(self.frames)


def register_recorder() -> type[RecordingBackend]:
    import pyvirtualcam

    RecordingBackend.instances.clear()
    pyvirtualcam.register_backend(BACKEND, RecordingBackend)
    return RecordingBackend


def unregister_recorder() -> None:
    import pyvirtualcam.camera

    pyvirtualcam.camera.BACKENDS.pop(BACKEND, None)


@pytest.fixture(autouse=True)
def no_recorder_left_behind():
    """Other tests that ask for any virtual camera backend must not find the test recorder."""
    yield
    unregister_recorder()


class UnpluggableSource(PatternSource):
    """The test pattern with a plug: while unplugged, reads and re-opens fail like a lost camera."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.plugged = threading.Event()
        self.plugged.set()
        self.opens = 0

    def open(self) -> None:
        if not self.plugged.is_set():
            raise SourceError("test camera is unplugged")
        self.opens += 1
        super().open()

    def read(self):
        if not self.plugged.is_set():
            raise SourceError("test camera stopped sending frames")
        return super().read()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def dreamcam_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dreamcam-") and t.is_alive()]


def _free_display() -> int:
    for number in range(90, 190):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise RuntimeError("no free X display number")


@pytest.fixture
def xvfb(monkeypatch):
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is not installed (scripts/dev-setup.sh installs it)")
    number = _free_display()
    proc = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "320x240x24", "-nolisten", "tcp", "-noreset"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Xvfb did not start")
            time.sleep(0.05)
        monkeypatch.setenv("DISPLAY", f":{number}")
        yield f":{number}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(5)
