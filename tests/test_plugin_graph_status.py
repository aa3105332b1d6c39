"""A stream that runs without a CUDA graph says so everywhere: Status, status line, log, doctor."""

from __future__ import annotations

import logging

import pytest

from dreamcam.engines.graphed import uncaptured_message
from dreamcam.plugin import config as cfg
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.control_server import ControlServer
from dreamcam.plugin.doctor import check_running_app
from dreamcam.plugin.live_status import status_line
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.sinks import NullSink
from plugin_helpers import wait_for


class Uncaptured(PassThrough):
    """Stands in for the core whose capture failed (the GPU edge); the message is the engines' own."""

    engine_name = "compiled"
    graph_warning = uncaptured_message("AcceleratorError: operation failed due to a previous error during capture")


@pytest.fixture
def app_and_port(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    app = DreamcamApp(AppSettings(control_port=0), StreamSettings(width=64, height=64),
                      sink=NullSink(fps=30), processor=Uncaptured())
    server = ControlServer(app.store, app.board, port=0)
    app.add_service(server)
    yield app, server
    app.stop()


def test_a_stream_without_a_cuda_graph_says_so_and_how_much_slower(app_and_port, caplog):
    app, server = app_and_port
    with caplog.at_level(logging.WARNING, logger="dreamcam.plugin.runner"):
        app.start()
        assert wait_for(lambda: app.board.latest().graph != "", timeout=10)
        status = app.board.latest()
        assert "without a CUDA graph" in status.graph and "5x slower" in status.graph and status.engine == "compiled"
        assert status.error == ""  # a slow path, not an error: the stream keeps running
        assert "without a CUDA graph" in status_line(status).plain
        check = check_running_app(server.port)
        assert check is not None and not check.ok and "without a CUDA graph" in check.detail
        assert wait_for(lambda: any("without a CUDA graph" in r.getMessage() for r in caplog.records), timeout=5)
    assert [r.levelno for r in caplog.records if "without a CUDA graph" in r.getMessage()][:1] == [logging.WARNING]


def test_doctor_finds_no_running_app_on_a_free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert check_running_app(port) is None
