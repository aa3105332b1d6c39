"""ObsBridge pieces that need no OBS: where the connection comes from, what status it sends."""

from __future__ import annotations

from dreamcam.plugin import messages
from dreamcam.plugin.control import SettingsStore, Status, StatusBoard
from dreamcam.plugin.obs_bridge import ObsBridge, connection_from_env, describe_connect_error


def test_connection_comes_from_arguments_then_environment(monkeypatch):
    monkeypatch.delenv("DREAMCAM_OBS_PASSWORD", raising=False)
    monkeypatch.delenv("DREAMCAM_OBS_HOST", raising=False)
    monkeypatch.delenv("DREAMCAM_OBS_PORT", raising=False)
    assert connection_from_env() == ("127.0.0.1", 4455, "")
    monkeypatch.setenv("DREAMCAM_OBS_PASSWORD", "from-env")
    monkeypatch.setenv("DREAMCAM_OBS_HOST", "studio.local")
    monkeypatch.setenv("DREAMCAM_OBS_PORT", "4460")
    assert connection_from_env() == ("studio.local", 4460, "from-env")
    assert connection_from_env("h", 1, "given") == ("h", 1, "given")
    # AppSettings' defaults (what `dreamcam run` passes when no option is given) yield to the env
    assert connection_from_env("127.0.0.1", 4455, None) == ("studio.local", 4460, "from-env")
    bridge = ObsBridge(SettingsStore(), StatusBoard())
    assert "from-env" not in repr(bridge)


def test_connect_errors_name_the_fix():
    kind, text = describe_connect_error(Exception("failed to identify client with the server"), "h", 9)
    assert kind == "auth" and "DREAMCAM_OBS_PASSWORD" in text and "Show Connect Info" in text
    kind, text = describe_connect_error(ConnectionRefusedError(111, "Connection refused"), "h", 9)
    assert kind == "refused" and "Enable WebSocket server" in text and "h:9" in text


def test_status_carries_the_last_rejection_and_clears_after_a_good_update():
    store, board = SettingsStore(), StatusBoard()
    board.publish(Status(running=True, fps_out=30.0, extra={"odd": object()}))
    bridge = ObsBridge(store, board, "127.0.0.1", 1, "x")
    bridge._on_event(messages.encode("settings", strength=3))
    body = bridge.status_event()[messages.NAMESPACE]
    assert body["kind"] == "status" and body["fps_out"] == 30.0 and body["paused"] is False
    assert body["error"].startswith("rejected update: strength")
    assert isinstance(body["odd"], str)  # anything the runner adds is sent as text
    bridge._on_event(messages.encode("settings", strength=0.3))
    assert store.current.strength == 0.3
    assert bridge.status_event()[messages.NAMESPACE]["error"] == ""
    assert (bridge.applied, bridge.rejected) == (1, 1)
