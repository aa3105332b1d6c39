"""The tray: pystray's dummy backend, its menu items invoked as a user would, driving a real app
(tiny model on the CPU, a still camera, a recording virtual camera)."""

from __future__ import annotations

import os

os.environ["PYSTRAY_BACKEND"] = "dummy"  # before pystray is imported anywhere

import numpy as np
import pytest

from app_parts import RecordingSink, StillCamera
from dreamcam.plugin import config as cfg
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.tray import TrayController, build_icon, draw_icon
from obs_harness import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture()
def tray(tiny_model_dir, config_dir):
    from dreamcam.plugin.pipeline import build_processor

    app_settings = AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"),
                               device="cpu", dtype="float32")
    sinks: list[RecordingSink] = []
    opened: list = []

    def make_app(initial: StreamSettings):
        sink = RecordingSink()
        sinks.append(sink)
        processor = build_processor(app_settings, initial, local_files_only=True)
        return DreamcamApp(app_settings, initial, source=StillCamera(64, 64, fps=15), sink=sink,
                           processor=processor)

    controller = TrayController(make_app, StreamSettings(similarity_filter=False, seed=5, width=64, height=64),
                                open_folder=opened.append)
    icon = build_icon(controller)
    origins: list[str] = []
    yield controller, icon, sinks, opened, origins
    controller.stop()


def item(menu, text):
    for entry in menu.items:
        if entry.text == text:
            return entry
    raise AssertionError(f"no menu item {text!r} in {[e.text for e in menu.items]}")


def click(icon, text, menu=None):
    item(menu or icon.menu, text)(icon)


def test_menu_starts_pauses_filters_and_stops_the_app(tray):
    controller, icon, sinks, _, _ = tray
    assert [e.text for e in icon.menu.items if e.text != "- - - -"] == [
        "Start", "Pause (pass the input through)", "Presets", "Similarity filter", "Open config folder", "Quit"]
    assert "stopped" in icon.title
    click(icon, "Start")
    assert wait_for(lambda: controller.running, 60), controller.last_error
    app = controller.app
    origins = []
    app.store.subscribe(lambda settings, origin: origins.append(origin))
    sink = sinks[-1]
    assert wait_for(lambda: sink.count() >= 3, 60)
    assert item(icon.menu, "Stop").text == "Stop"
    processed = sink.last()
    assert not np.array_equal(processed, app.source.image)  # the model changes the picture

    click(icon, "Pause (pass the input through)")
    assert app.store.current.paused and item(icon.menu, "Pause (pass the input through)").checked
    n = sink.count()
    assert wait_for(lambda: sink.count() >= n + 3, 30)
    assert np.array_equal(sink.last(), app.source.image)  # the input passes through unchanged
    click(icon, "Pause (pass the input through)")
    assert not app.store.current.paused

    assert not item(icon.menu, "Similarity filter").checked
    click(icon, "Similarity filter")
    assert app.store.current.similarity_filter and item(icon.menu, "Similarity filter").checked
    assert origins == ["tray", "tray", "tray"]  # the same settings path as OBS, marked as the tray's

    assert wait_for(lambda: "fps" in controller.tooltip(), 10)
    icon.title = controller.tooltip()
    assert icon.title.startswith("Dreamcam: ") and "fps" in icon.title

    click(icon, "Stop")
    assert not controller.running and not app.is_running
    assert controller.store.current.similarity_filter  # kept for the next start
    assert icon.menu.items[0].text == "Start"


def test_presets_menu_applies_saved_presets(tray):
    controller, icon, *_ = tray
    presets = item(icon.menu, "Presets").submenu
    assert "no presets saved" in presets.items[0].text and not presets.items[0].enabled
    cfg.save_preset("Ink", StreamSettings(prompt="black ink drawing", strength=0.7, seed=9))
    cfg.save_preset("Neon", StreamSettings(prompt="neon city at night", guidance_scale=2.0))
    presets = item(icon.menu, "Presets").submenu
    assert [e.text for e in presets.items] == ["Ink", "Neon"]
    click(icon, "Neon", presets)  # works while stopped: the next start uses it
    s = controller.store.current
    assert (s.prompt, s.guidance_scale, s.preset) == ("neon city at night", 2.0, "Neon")
    assert item(presets, "Neon").checked and not item(presets, "Ink").checked

    controller.start(wait=True)
    assert controller.running and controller.app.store.current.prompt == "neon city at night"
    click(icon, "Ink", item(icon.menu, "Presets").submenu)
    s = controller.app.store.current
    assert (s.prompt, s.strength, s.seed, s.preset) == ("black ink drawing", 0.7, 9, "Ink")
    assert "Ink" in controller.tooltip()

    (cfg.presets_dir() / "Broken.json").write_text('{"strength": 9}')
    before = controller.store.current
    click(icon, "Broken", item(icon.menu, "Presets").submenu)
    assert controller.store.current == before and "strength" in controller.last_error


def test_open_config_folder_and_quit(tray, config_dir):
    controller, icon, _, opened, _ = tray
    click(icon, "Open config folder")
    assert opened == [config_dir] and config_dir.is_dir()
    controller.start(wait=True)
    app = controller.app
    assert app.is_running
    click(icon, "Quit")
    assert not app.is_running and not controller.running


def test_start_failure_is_shown_not_raised(config_dir):
    def broken(_initial):
        raise RuntimeError("no camera at index 3")

    controller = TrayController(broken, open_folder=lambda p: None)
    icon = build_icon(controller)
    click(icon, "Start")
    assert wait_for(lambda: not controller.starting, 10)
    assert not controller.running and "no camera at index 3" in controller.tooltip()


def test_icon_images_show_the_state():
    images = {state: draw_icon(state) for state in ("running", "paused", "stopped")}
    for image in images.values():
        assert image.size == (64, 64) and image.mode == "RGBA"
    centre_ring = {state: image.getpixel((32, 12)) for state, image in images.items()}
    assert len(set(centre_ring.values())) == 3


@pytest.mark.obs  # needs Xvfb (installed with OBS by scripts/dev-setup.sh)
@pytest.mark.timeout(300)
def test_dreamcam_tray_runs_with_a_real_tray_backend_and_stops_on_sigterm(tiny_model_dir, tmp_path, monkeypatch):
    """`dreamcam tray` on pystray's xorg backend under Xvfb: starts the stream, exits cleanly."""
    import signal
    import subprocess
    import sys
    import time

    from obs_harness import ObsInstance

    from dreamcam.plugin.control_server import get_state, send_settings
    from obs_harness import free_port

    x = ObsInstance(tmp_path, 0, "")
    x.start_xvfb()
    port = free_port()
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))  # the tray's control token is read from there
    config = tmp_path / "dreamcam.toml"
    config.write_text(
        f'[app]\nmodel = "{tiny_model_dir}"\ntiny_vae = "{tiny_model_dir / "taesd"}"\ndevice = "cpu"\n'
        f'source = "pattern"\nsink = "null"\ncontrol_port = {port}\n'
        '[stream]\nprompt = "tray test"\nwidth = 64\nheight = 64\n')
    env = dict(os.environ, DISPLAY=x.display, PYSTRAY_BACKEND="xorg",
               DREAMCAM_CONFIG_DIR=str(tmp_path / "cfg"), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "dreamcam.plugin.cli", "tray", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 150  # a fresh process imports torch and loads the model
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "the stream is running" in line:
                break
        assert any("the stream is running" in line for line in lines), "".join(lines)
        # the tray serves the control port: `dreamcam set` reaches its stream
        assert wait_for(lambda: _answers(port), 20)
        assert send_settings({"strength": 0.3}, port=port)["ok"]
        assert get_state(port=port)["settings"]["strength"] == 0.3
        time.sleep(2.5)  # a few tooltip redraws: each one used to log a "Failed to dock icon" traceback
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
        out = "".join(lines) + rest
        assert proc.returncode == 0, out
        assert "tray: stopped" in rest
        # Xvfb has no tray host, and this backend no menu: one line each says so, with the fix
        assert out.count("no system tray on this display") == 1, out
        assert out.count("the tray icon has no menu here") == 1 and "python3-gi" in out, out
        assert "Failed to dock icon" not in out and "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        x.stop()


def _answers(port: int) -> bool:
    from dreamcam.plugin.control_server import get_state

    try:
        return bool(get_state(port=port, timeout=1)["ok"])
    except ConnectionError:
        return False


def test_linux_backend_without_pygobject_is_xorg_and_says_how_to_get_a_menu(monkeypatch):
    import sys

    from dreamcam.plugin import tray_backend

    monkeypatch.delenv("PYSTRAY_BACKEND", raising=False)
    monkeypatch.setitem(sys.modules, "gi", None)  # PyGObject missing from this Python (a venv)
    backend = tray_backend.choose_backend("linux")
    assert (backend.name, backend.has_menu) == ("xorg", False)
    assert os.environ["PYSTRAY_BACKEND"] == "xorg"
    assert "no menu" in backend.note and "gir1.2-ayatanaappindicator3-0.1" in backend.note
    assert "--system-site-packages" in backend.note and "\n" not in backend.note
    monkeypatch.setenv("PYSTRAY_BACKEND", "gtk")  # a backend the user names is used as named
    assert tray_backend.choose_backend("linux") == tray_backend.TrayBackend("gtk", True)
    assert tray_backend.choose_backend("win32").has_menu


def test_gui_entry_point_logs_to_the_config_folder(config_dir, monkeypatch):
    """`dreamcam-tray` has no console on Windows: a failure must land in a log file."""
    import logging

    from dreamcam.plugin import tray

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # let basicConfig act in this process
    monkeypatch.setenv("PYSTRAY_BACKEND", "no-such-backend")  # no tray available
    monkeypatch.delitem(__import__("sys").modules, "pystray", raising=False)
    with pytest.raises(SystemExit):
        tray.main(["--no-autostart"])
    log_text = (config_dir / "dreamcam-tray.log").read_text()
    assert "no system tray available" in log_text
    for handler in logging.getLogger().handlers:
        handler.close()


def test_the_tray_app_serves_the_control_port_with_the_token(tiny_model_dir, config_dir, tmp_path):
    """The tray's real app factory (TOML config, the real pipeline on the tiny model): the control
    port answers `dreamcam set`-style clients that hold the token, refuses the others, and a second
    tray on the same port says so in its tooltip."""
    import json
    import socket

    from dreamcam.plugin import secret
    from dreamcam.plugin.control_server import send_settings
    from dreamcam.plugin.tray import app_factory

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "dreamcam.toml"
    config.write_text(
        f'[app]\nmodel = "{tiny_model_dir}"\ntiny_vae = "{tiny_model_dir / "taesd"}"\ndevice = "cpu"\n'
        f'source = "pattern"\nsink = "null"\ncontrol_port = {port}\n[stream]\nwidth = 64\nheight = 64\n')
    make_app, initial = app_factory(config)
    first = TrayController(make_app, initial, open_folder=lambda p: None)
    second = TrayController(make_app, initial, open_folder=lambda p: None)
    try:
        first.start(wait=True)
        assert first.running, first.last_error
        reply = send_settings({"prompt": "from a stream deck"}, port=port)
        assert reply["ok"] and first.store.current.prompt == "from a stream deck"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(json.dumps({"dreamcam": {"v": 1, "kind": "settings", "prompt": "no token"}}).encode() + b"\n")
            refused = json.loads(conn.makefile("rb").readline())
        assert not refused["ok"] and str(secret.secret_path()) in refused["error"]
        assert first.store.current.prompt == "from a stream deck"
        second.start(wait=True)
        assert not second.running and "another Dreamcam" in second.last_error + second.tooltip()
    finally:
        second.stop()
        first.stop()
