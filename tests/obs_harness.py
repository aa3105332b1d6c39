"""A real OBS Studio for tests: Xvfb on a display it picks itself, OBS with a throw-away config
(websocket on a free port with a password, our script loaded from the scene collection), stopped
with SIGINT by pid (a clean exit that runs script_unload), Xvfb stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "obs_scripts" / "dreamcam_obs.py"
COLLECTION = "DreamcamTest"


def have_obs() -> bool:
    return bool(shutil.which("obs") and shutil.which("Xvfb"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python_path_for_obs(root: Path) -> Path:
    """OBS embeds the system Python, which need not see our site-packages: expose only the two
    pure-Python packages the script needs (obsws_python and websocket-client)."""
    import obsws_python
    import websocket

    vendor = root / "obs-pythonpath"
    vendor.mkdir(parents=True, exist_ok=True)
    for module in (obsws_python, websocket):
        src = Path(module.__file__).parent
        link = vendor / src.name
        if not link.exists():
            link.symlink_to(src)
    return vendor


def _python_path_without_obsws(root: Path) -> Path:
    """A PYTHONPATH entry that makes `import obsws_python` fail even where the system has it."""
    blocker = root / "obs-pythonpath-blocked" / "obsws_python"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text('raise ImportError("No module named \'obsws_python\'")\n')
    return blocker.parent


def write_config(config_home: Path, port: int, password: str, script_settings: dict[str, Any],
                 script: Path = SCRIPT) -> None:
    root = config_home / "obs-studio"
    for sub in ("basic/profiles/" + COLLECTION, "basic/scenes", "plugin_config/obs-websocket"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    general = (f"[General]\nFirstRun=true\n\n[Basic]\nProfile={COLLECTION}\nProfileDir={COLLECTION}\n"
               f"SceneCollection={COLLECTION}\nSceneCollectionFile={COLLECTION}\n")
    (root / "global.ini").write_text(
        general + "\n[OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\n"
        f"ServerPort={port}\nAlertsEnabled=false\nAuthRequired=true\nServerPassword={password}\n")
    (root / "user.ini").write_text(general)
    (root / "plugin_config/obs-websocket/config.json").write_text(json.dumps({
        "first_load": False, "server_enabled": True, "server_port": port, "alerts_enabled": False,
        "auth_required": True, "server_password": password}))
    (root / f"basic/profiles/{COLLECTION}/basic.ini").write_text(
        f"[General]\nName={COLLECTION}\n\n[Video]\nBaseCX=320\nBaseCY=180\nOutputCX=320\nOutputCY=180\n"
        "FPSType=1\nFPSInt=10\n")
    (root / f"basic/scenes/{COLLECTION}.json").write_text(json.dumps({
        "name": COLLECTION, "current_scene": "Scene", "current_program_scene": "Scene",
        "scene_order": [{"name": "Scene"}], "groups": [], "transitions": [], "quick_transitions": [],
        "sources": [{"id": "scene", "versioned_id": "scene", "name": "Scene",
                     "settings": {"id_counter": 0, "items": [], "custom_size": False}}],
        "modules": {"scripts-tool": [{"path": str(script), "settings": script_settings}]},
    }))


@dataclass
class ObsInstance:
    workdir: Path
    port: int
    password: str
    script_settings: dict[str, Any] = field(default_factory=dict)
    display: str = ""
    xvfb: subprocess.Popen | None = None
    obs: subprocess.Popen | None = None
    give_obsws: bool = True  # False: OBS's Python cannot import obsws_python
    script: Path = SCRIPT  # the panel script the scene collection loads

    @property
    def status_file(self) -> Path:
        return self.workdir / "panel-status.txt"

    @property
    def config_home(self) -> Path:
        return self.workdir / "config"

    def start_xvfb(self) -> None:
        read_fd, write_fd = os.pipe()
        self.xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x360x24", "-nolisten", "tcp"],
            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        self.display = f":{number}"

    def start_obs(self, wait: float = 60.0) -> None:
        """(Re)start OBS on the same config and wait until its websocket accepts our password."""
        self.script_settings.setdefault("status_file", str(self.status_file))
        write_config(self.config_home, self.port, self.password, self.script_settings, self.script)
        env = dict(_without_opencv_qt(os.environ), DISPLAY=self.display, XDG_CONFIG_HOME=str(self.config_home),
                   HOME=str(self.workdir / "home"),
                   PYTHONPATH=str(_python_path_for_obs(self.workdir) if self.give_obsws
                                  else _python_path_without_obsws(self.workdir)),
                   LIBGL_ALWAYS_SOFTWARE="1")
        (self.workdir / "home").mkdir(exist_ok=True)
        log = open(self.workdir / "obs-stdout.log", "ab")
        # cwd: OBS puts its cwd first on sys.path; an empty folder keeps imports clean.
        cwd = self.workdir / "cwd"
        cwd.mkdir(exist_ok=True)
        self.obs = subprocess.Popen(
            ["obs", "--multi", "--collection", COLLECTION, "--profile", COLLECTION,
             "--disable-missing-files-check", "--minimize-to-tray"],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_ready(wait)

    def wait_ready(self, timeout: float) -> None:
        import obsws_python

        from dreamcam.plugin.obs_bridge import quiet_obsws_logging

        quiet_obsws_logging()  # one traceback per refused attempt otherwise

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.obs is not None and self.obs.poll() is not None:
                raise RuntimeError(f"OBS exited with {self.obs.returncode}; see {self.workdir}/obs-stdout.log")
            try:
                client = obsws_python.ReqClient(host="127.0.0.1", port=self.port,
                                                password=self.password, timeout=2)
                client.disconnect()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"OBS websocket not ready after {timeout} s")

    def stop_obs(self, sig: int = signal.SIGINT) -> None:
        if self.obs is None:
            return
        if self.obs.poll() is None:
            self.obs.send_signal(sig)
            try:
                self.obs.wait(10)
            except subprocess.TimeoutExpired:
                self.obs.kill()
                self.obs.wait(5)
        self.obs = None

    def kill_obs(self) -> None:
        self.stop_obs(signal.SIGKILL)

    def stop(self) -> None:
        self.stop_obs()
        if self.xvfb is not None and self.xvfb.poll() is None:
            self.xvfb.terminate()
            try:
                self.xvfb.wait(5)
            except subprocess.TimeoutExpired:
                self.xvfb.kill()
        self.xvfb = None

    def script_log(self) -> str:
        """OBS's log files (the script's log lines land there)."""
        logs = self.config_home / "obs-studio" / "logs"
        return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.txt"))) if logs.exists() else ""

    def panel_status(self) -> str:
        try:
            return self.status_file.read_text().strip()
        except OSError:
            return ""

    def panel_values(self) -> dict[str, Any]:
        """What the panel inside OBS holds: `values` (its controls' settings), `in_force` (the
        app's state as it last heard it), `drafts`, `presets`, `hotkeys`, `short` (its top line)."""
        try:
            return json.loads(self.status_file.with_name(self.status_file.name + ".json").read_text())
        except (OSError, ValueError):
            return {}

    def trigger_hotkey(self, name: str) -> None:
        """Press an OBS hotkey through obs-websocket (TriggerHotkeyByName: the press only)."""
        import obsws_python

        client = obsws_python.ReqClient(host="127.0.0.1", port=self.port, password=self.password, timeout=5)
        try:
            client.send("TriggerHotkeyByName", {"hotkeyName": name})
        finally:
            client.disconnect()


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def _without_opencv_qt(environ) -> dict:
    """The environment without what importing OpenCV (cv2) put in it: its Qt plugin and font folders
    and its library folder make OBS load cv2's Qt plugins and abort ("could not load the Qt platform
    plugin xcb"), which happens once any earlier test in the same process imported cv2."""
    env = {k: v for k, v in environ.items() if k not in ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")}
    if "LD_LIBRARY_PATH" in env:
        kept = [p for p in env["LD_LIBRARY_PATH"].split(os.pathsep) if p and "cv2" not in p]
        if kept:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(kept)
        else:
            del env["LD_LIBRARY_PATH"]
    return env
