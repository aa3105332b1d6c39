"""The OSC service: a real python-osc client over loopback UDP against a running app's service;
the values land in the app's SettingsStore, refusals come back on /dreamcam/error. And the real
`dreamcam run` with OSC, MIDI (a JACK virtual port, see test_plugin_midi) and the control port."""

from __future__ import annotations

import math
import socket
import subprocess
import time
from pathlib import Path

import mido
import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from dreamcam.plugin import config as cfg
from dreamcam.plugin import osc_map
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.control_server import send_event
from dreamcam.plugin.messages import encode
from dreamcam.plugin.osc_server import OscServer, parse_target
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, SettingsError, StreamSettings
from dreamcam.plugin.sinks import NullSink
from midi_helpers import jack, virtual_controller  # noqa: F401 (jack: a fixture)
from plugin_helpers import dreamcam_threads, wait_for
from test_cli import dreamcam, free_port, run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "control.md"


def make_app(tmp_path, monkeypatch) -> DreamcamApp:
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    return DreamcamApp(AppSettings(control_port=0), StreamSettings(prompt="start", width=64, height=64),
                       sink=NullSink(), processor=PassThrough())


@pytest.fixture
def osc_app(tmp_path, monkeypatch):
    app = make_app(tmp_path, monkeypatch)
    server = OscServer(app.store, app.board, port=0)
    app.add_service(server)
    app.start()
    client = SimpleUDPClient("127.0.0.1", server.port)
    yield app, client
    client.close()
    app.stop()
    assert not [t for t in dreamcam_threads() if t.startswith("dreamcam-osc")]


def replies(source, until: str, timeout: float = 5.0) -> dict[str, list]:
    """Messages received (address -> arguments, the last of each) until `until` has arrived and
    the messages sent with it (nothing more for 0.1 s)."""
    got: dict[str, list] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = _recv(source, 0.1 if until in got else 0.2)
        if data:
            message = OscMessage(data)
            got[message.address] = list(message.params)
        elif until in got:
            break
    assert until in got, f"no {until} within {timeout} s (got {sorted(got)})"
    return got


def _recv(source, wait: float) -> bytes:
    if isinstance(source, SimpleUDPClient):
        return source.receive(wait)
    source.settimeout(wait)
    try:
        return source.recv(65536)
    except socket.timeout:
        return b""


def test_values_are_applied_and_echoed(osc_app):
    app, client = osc_app
    client.send_message("/dreamcam/strength", 0.3)
    got = replies(client, "/dreamcam/strength")
    assert app.store.current.strength == pytest.approx(0.3)
    assert got["/dreamcam/strength"] == [pytest.approx(0.3)]
    assert got["/dreamcam/norm/strength"] == [pytest.approx(0.3)]
    client.send_message("/dreamcam/prompt", "a harbour at night")
    replies(client, "/dreamcam/prompt")
    assert app.store.current.prompt == "a harbour at night"
    client.send_message("/dreamcam/steps", 3.0)  # TouchOSC sends floats: a whole float is fine
    assert replies(client, "/dreamcam/steps")["/dreamcam/steps"] == [3]
    assert app.store.current.steps == 3
    client.send_message("/dreamcam/paused", 1.0)  # a button
    replies(client, "/dreamcam/paused")
    assert app.store.current.paused is True
    client.send_message("/dreamcam/paused/toggle", [])
    assert replies(client, "/dreamcam/paused")["/dreamcam/paused"] == [False]
    client.send_message("/dreamcam/t_index_list", [20, 35])
    assert replies(client, "/dreamcam/t_index_list")["/dreamcam/t_index_list"] == [20, 35]
    assert app.store.current.t_index_list == (20, 35)


@pytest.mark.parametrize("address, value, field", [
    ("/dreamcam/strength", 2.0, "strength"),
    ("/dreamcam/strength", float("nan"), "strength"),
    ("/dreamcam/guidance_scale", float("inf"), "guidance_scale"),
    ("/dreamcam/prompt", 5, "prompt"),
    ("/dreamcam/cfg_type", "extra", "cfg_type"),
    ("/dreamcam/steps", 2.5, "steps"),
    ("/dreamcam/norm/strength", 1.5, "strength"),
    ("/dreamcam/norm/strength", float("nan"), "strength"),
    ("/dreamcam/preset", "Nope", "preset"),
    ("/dreamcam/strength", [0.1, 0.2], "strength"),
])
def test_a_bad_value_is_answered_on_error_and_changes_nothing(osc_app, address, value, field):
    app, client = osc_app
    before, version = app.store.snapshot()
    client.send_message(address, value)
    reason, where = replies(client, osc_map.ERROR_ADDRESS)[osc_map.ERROR_ADDRESS]
    assert reason.startswith(f"{field}:") and where == address
    assert app.store.snapshot() == (before, version)
    client.send_message("/dreamcam/strength", 0.25)  # the service goes on
    replies(client, "/dreamcam/strength")
    assert app.store.current.strength == 0.25


def test_normalised_faders_scale_to_the_schema_range(osc_app):
    app, client = osc_app
    client.send_message("/dreamcam/norm/guidance_scale", 0.25)
    got = replies(client, "/dreamcam/guidance_scale")
    assert app.store.current.guidance_scale == pytest.approx(5.0)  # range 0..20
    assert got["/dreamcam/norm/guidance_scale"] == [pytest.approx(0.25)]
    client.send_message("/dreamcam/norm/steps", 0.6)  # 1 + 0.6 * 7 = 5.2 -> 5
    replies(client, "/dreamcam/steps")
    assert app.store.current.steps == 5
    client.send_message("/dreamcam/norm/strength", 1)
    replies(client, "/dreamcam/strength")
    assert app.store.current.strength == 1.0
    client.send_message("/dreamcam/norm/width", 0.3)  # 32 + 0.3 * 2016 = 636.8 -> 640, a multiple of 8
    replies(client, "/dreamcam/width")
    assert app.store.current.width == 640


def test_presets_seed_and_queries(osc_app):
    app, client = osc_app
    cfg.save_preset("Ink", StreamSettings(prompt="black ink", strength=0.7))
    cfg.save_preset("Oil", StreamSettings(prompt="oil paint", strength=0.4))
    client.send_message("/dreamcam/preset", "Ink")
    got = replies(client, "/dreamcam/preset")
    assert (app.store.current.prompt, app.store.current.preset) == ("black ink", "Ink")
    assert got["/dreamcam/preset"] == ["Ink"] and got["/dreamcam/prompt"] == ["black ink"]
    client.send_message("/dreamcam/preset/next", [])
    replies(client, "/dreamcam/preset")
    assert app.store.current.preset == "Oil"
    client.send_message("/dreamcam/preset/next", [])  # wraps around
    replies(client, "/dreamcam/preset")
    assert app.store.current.preset == "Ink"
    seed = app.store.current.seed
    client.send_message("/dreamcam/seed/random", [])
    assert replies(client, "/dreamcam/seed")["/dreamcam/seed"] == [app.store.current.seed] != [seed]
    client.send_message("/dreamcam/delta", [])  # no arguments: a query
    assert replies(client, "/dreamcam/delta")["/dreamcam/delta"] == [app.store.current.delta]
    client.send_message("/dreamcam/sync", [])
    got = replies(client, "/dreamcam/paused")
    assert {f"/dreamcam/{name}" for name in ("prompt", "strength", "seed", "cfg_type")} <= set(got)
    client.send_message("/dreamcam/nothing", 1)
    assert "unknown address" in replies(client, osc_map.ERROR_ADDRESS)[osc_map.ERROR_ADDRESS][0]


def test_feedback_target_gets_replies_changes_from_elsewhere_and_status(tmp_path, monkeypatch):
    app = make_app(tmp_path, monkeypatch)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.2)
    server = OscServer(app.store, app.board, port=0, feedback=listener.getsockname(), status_interval=0.2)
    app.add_service(server)
    app.start()
    try:
        client = SimpleUDPClient("127.0.0.1", server.port)
        client.send_message("/dreamcam/strength", 0.8)
        assert replies(listener, "/dreamcam/strength")["/dreamcam/strength"] == [pytest.approx(0.8)]
        app.store.apply({"prompt": "from the OBS panel"}, origin="obs")
        assert replies(listener, "/dreamcam/prompt")["/dreamcam/prompt"] == ["from the OBS panel"]
        got = replies(listener, "/dreamcam/status/latency_ms")
        assert wait_for(lambda: app.board.latest().running, 5)
        got = replies(listener, "/dreamcam/status/fps_out")
        assert all(f"/dreamcam/status/{key}" in got for key in ("fps_in", "infer_ms", "error"))
        assert not math.isnan(got["/dreamcam/status/fps_out"][0])
        client.send_message("/dreamcam/seed", -1)
        assert "seed" in replies(listener, osc_map.ERROR_ADDRESS)[osc_map.ERROR_ADDRESS][0]
        assert client.receive(0.3) == b""  # with a feedback target, nothing goes to the sender
        client.close()
    finally:
        app.stop()
        listener.close()


def test_a_taken_port_is_one_clear_error(tmp_path, monkeypatch):
    app = make_app(tmp_path, monkeypatch)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        server = OscServer(app.store, app.board, port=taken.getsockname()[1])
        with pytest.raises(OSError, match="--osc-port"):
            server.start()


def test_feedback_target_text():
    assert parse_target("127.0.0.1:9001") == ("127.0.0.1", 9001)
    for bad in ("9001", "host:", "host:0", "host:http"):
        with pytest.raises(SettingsError, match="osc_feedback: expected HOST:PORT"):
            parse_target(bad)


def test_the_docs_list_every_address_of_the_schema():
    text = DOC.read_text(encoding="utf-8")
    assert osc_map.doc_section(text) == osc_map.address_table(), (
        "docs/control.md's OSC list differs from the schema: run "
        "`python -m dreamcam.plugin.osc_map --write docs/control.md`")
    for address in ("/dreamcam/prompt", "/dreamcam/strength", "/dreamcam/preset", "/dreamcam/paused",
                    "/dreamcam/seed/random", "/dreamcam/norm/strength"):
        assert f"`{address}`" in text


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_dreamcam_run_with_osc_midi_and_the_control_port(tmp_path, tiny_model_dir, jack):
    """The real command on the tiny model: OSC and MIDI in, `dreamcam set` (the control port) seen
    on OSC's feedback target."""
    control, osc = free_port(), free_udp_port()
    midi_map = tmp_path / "midi.toml"
    midi_map.write_text('[midi]\ndevice = "dreamcam-run-ctl"\napi = "jack"\ncc.7 = "guidance_scale"\n',
                        encoding="utf-8")
    controller = virtual_controller("dreamcam-run-ctl")
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    feedback = f"127.0.0.1:{listener.getsockname()[1]}"
    proc = subprocess.Popen(
        dreamcam("run", "--model", str(tiny_model_dir), "--tiny-vae", str(tiny_model_dir / "taesd"), "--device", "cpu",
                 "--engine", "eager", "--size", "64", "--sink", "null", "--control-port", str(control),
                 "--osc-port", str(osc), "--osc-feedback", feedback, "--midi-map", str(midi_map)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = SimpleUDPClient("127.0.0.1", osc)

        def answers() -> bool:  # OSC starts with the stream, after the model load
            client.send_message("/dreamcam/seed", [])
            listener.settimeout(0.5)
            try:
                return OscMessage(listener.recv(65536)).address == "/dreamcam/seed"
            except socket.timeout:
                return proc.poll() is None and False
        assert wait_for(answers, timeout=90, step=0.2), proc.stderr.read() if proc.poll() is not None else ""
        client.send_message("/dreamcam/prompt", "a paper boat")
        assert replies(listener, "/dreamcam/prompt")["/dreamcam/prompt"] == ["a paper boat"]
        assert send_event(encode("hello"), port=control)["settings"]["prompt"] == "a paper boat"
        client.send_message("/dreamcam/norm/strength", float("nan"))
        assert replies(listener, osc_map.ERROR_ADDRESS)[osc_map.ERROR_ADDRESS][0].startswith("strength:")
        assert run_cli("set", "strength=0.35", "--port", str(control)).returncode == 0
        assert replies(listener, "/dreamcam/strength")["/dreamcam/strength"] == [pytest.approx(0.35)]
        controller.send(mido.Message("control_change", control=7, value=127))  # MIDI, seen on OSC
        assert replies(listener, "/dreamcam/guidance_scale")["/dreamcam/guidance_scale"] == [20.0]
        got = replies(listener, "/dreamcam/status/fps_out", timeout=5)
        assert got["/dreamcam/status/running"] == [True]
        client.close()
        proc.terminate()
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert f"OSC: udp 127.0.0.1:{osc}" in out
    finally:
        listener.close()
        controller.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
