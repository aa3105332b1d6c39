"""The local control server: JSON lines over TCP, handled with the control protocol."""

from __future__ import annotations

import json
import socket

import pytest

from dreamcam.plugin import config as cfg
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.control_server import ControlServer, send_event, send_settings
from dreamcam.plugin.messages import encode
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.sinks import NullSink
from plugin_helpers import dreamcam_threads


@pytest.fixture
def running_app(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    app = DreamcamApp(AppSettings(width=64, height=64, control_port=0), StreamSettings(prompt="start"),
                      sink=NullSink(), processor=PassThrough())
    server = ControlServer(app.store, app.board, port=0)
    app.add_service(server)
    app.start()
    yield app, server.port
    app.stop()


def test_settings_update_over_the_socket(running_app):
    app, port = running_app
    reply = send_settings({"prompt": "a cat", "strength": 0.3}, port=port)
    assert reply["ok"] and reply["settings"]["prompt"] == "a cat"
    assert app.store.current.strength == 0.3
    assert "fps_out" in reply["status"]


def test_bad_updates_change_nothing_and_name_the_field(running_app):
    app, port = running_app
    reply = send_settings({"prompt": "half", "strength": -1}, port=port)
    assert not reply["ok"] and "strength" in reply["error"]
    reply = send_settings({"prompt": "y" * 100_000}, port=port)
    assert not reply["ok"] and "bytes" in reply["error"]
    reply = send_event(encode("settings", prompt="z" * 5000), port=port)
    assert not reply["ok"] and "prompt" in reply["error"]
    assert app.store.current.prompt == "start"


def test_preset_by_name_and_garbage_lines(running_app):
    app, port = running_app
    cfg.save_preset("Ink", StreamSettings(prompt="black ink", seed=9))
    reply = send_settings({"preset": "Ink"}, port=port)
    assert reply["ok"] and app.store.current.prompt == "black ink" and app.store.current.preset == "Ink"
    assert not send_settings({"preset": "Nope"}, port=port)["ok"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"this is not json\n" + json.dumps({"other": 1}).encode() + b"\n")
        lines = conn.makefile("rb")
        first, second = json.loads(lines.readline()), json.loads(lines.readline())
    assert not first["ok"] and "not JSON" in first["error"]
    assert second["ok"]  # not a dreamcam message: ignored, status returned


def test_server_stops_with_the_app(running_app):
    app, port = running_app
    app.stop()
    assert dreamcam_threads() == []
    with pytest.raises(ConnectionError, match="no dreamcam app answers"):
        send_settings({"prompt": "late"}, port=port, timeout=1)


def test_an_endless_line_is_refused_without_reading_it_all(running_app):
    app, port = running_app
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"x" * 200_000)
        reply = json.loads(conn.makefile("rb").readline())
    assert not reply["ok"] and "bytes" in reply["error"]
    assert send_settings({"prompt": "still fine"}, port=port)["ok"]
