"""The `dreamcam` command line, run as a user runs it (subprocesses)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import av

from dreamcam.plugin.control_server import send_event
from dreamcam.plugin.messages import encode
from plugin_helpers import wait_for


def dreamcam(*args: str) -> list[str]:
    exe = shutil.which("dreamcam")
    return [exe, *args] if exe else [sys.executable, "-m", "dreamcam.plugin.cli", *args]


def run_cli(*args: str, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(dreamcam(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_help_lists_the_commands():
    result = run_cli("--help", env={"COLUMNS": "200"})
    assert result.returncode == 0
    for command in ("run", "demo", "devices", "doctor", "bench", "set", "preset"):
        assert command in result.stdout
    run_help = run_cli("run", "--help", env={"COLUMNS": "200"}).stdout
    for option in ("--source", "--sink", "--model", "--engine", "--size", "--prompt", "--steps",
                   "--strength", "--config", "--obs", "--no-similarity-filter"):
        assert option in run_help


def test_demo_writes_the_frames_it_promises(tmp_path):
    out = tmp_path / "demo.mp4"
    start = time.monotonic()
    result = run_cli("demo", "--frames", "12", "--size", "64", "--out", str(out),
                     env={"DREAMCAM_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "frames per second" in result.stdout
    assert count_frames(out) == 12
    assert time.monotonic() - start < 60


def test_demo_errors_are_one_clear_line(tmp_path):
    env = {"DREAMCAM_CACHE_DIR": str(tmp_path / "cache")}
    for args, words in ((("--device", "tpu"), "'tpu' is not a device name"),
                        (("--out", str(tmp_path / "no" / "demo.mp4")), "does not exist")):
        result = run_cli("demo", "--frames", "2", "--size", "64", *args, env=env)
        assert result.returncode == 1 and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "SinkError" not in result.stderr


def test_run_writes_a_file_from_the_tiny_model(tmp_path, tiny_model_dir):
    out = tmp_path / "run.mp4"
    result = run_cli("run", "--model", str(tiny_model_dir), "--tiny-vae", str(tiny_model_dir / "taesd"),
                     "--device", "cpu", "--engine", "eager", "--size", "64", "--sink", f"file:{out}",
                     "--frames", "8", "--control-port", "0", "--web-port", "0", "--prompt", "a lighthouse")
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == 8
    assert "stopped: 8 frames written to file:" in " ".join(result.stdout.split()), result.stdout


def test_run_rejects_bad_settings_naming_the_field(tmp_path):
    for args, field in ((["--strength", "-0.5"], "strength"), (["--engine", "warp"], "engine"),
                        (["--prompt", "x" * 100_000], "prompt"), (["--frames-in-flight", "9"], "frames_in_flight")):
        result = run_cli("run", "--sink", "null", *args)
        assert result.returncode == 2
        assert f"{field}:" in result.stderr, result.stderr
    config = tmp_path / "c.toml"
    config.write_text("[stream]\nguidance_scale = 99\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2 and "guidance_scale" in result.stderr


def test_set_reaches_a_running_app_and_sigterm_stops_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("DREAMCAM_CONFIG_DIR", str(tmp_path / "cfg"))  # the app's and the clients' secret
    port = free_port()
    proc = subprocess.Popen(
        dreamcam("run", "--model", str(tiny_model_dir), "--tiny-vae", str(tiny_model_dir / "taesd"),
                 "--device", "cpu", "--engine", "eager", "--size", "64", "--sink", "null",
                 "--control-port", str(port), "--web-port", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def streaming() -> bool:  # the control port answers during the model load already
            try:
                return send_event(encode("hello"), port=port, timeout=1)["status"]["running"]
            except OSError:  # not listening yet, or no token yet (the app makes it as it starts)
                return proc.poll() is None and False
        assert wait_for(streaming, timeout=60, step=0.2), proc.stderr.read() if proc.poll() is not None else ""
        result = run_cli("set", "prompt=a paper boat", "strength=0.35", "paused=true", "--port", str(port))
        assert result.returncode == 0, result.stderr
        assert "prompt='a paper boat'" in result.stdout
        reply = send_event(encode("hello"), port=port)
        assert reply["settings"]["prompt"] == "a paper boat" and reply["settings"]["paused"] is True
        bad = run_cli("set", "strength=-1", "--port", str(port))
        assert bad.returncode == 2 and "strength: must be from 0.0 to 1.0" in bad.stderr  # refused before sending (schema check)
        assert send_event(encode("hello"), port=port)["settings"]["strength"] == 0.35
        assert send_event(encode("hello"), port=port)["settings"]["width"] == 64  # --size: the start value
        bad = run_cli("set", "width=100", "--port", str(port))
        assert bad.returncode == 2 and "width: must be a multiple of 8, got 100" in bad.stderr
        resized = run_cli("set", "width=96", "height=48", "--port", str(port))  # live: the camera keeps 64x64
        assert resized.returncode == 0, resized.stderr
        assert send_event(encode("hello"), port=port)["settings"]["width"] == 96
        for command in (("status",), ("set",)):  # both print the settings in force and the status
            shown = run_cli(*command, "--port", str(port))
            assert shown.returncode == 0, shown.stderr
            assert 'prompt               = "a paper boat"' in shown.stdout, shown.stdout
            assert "strength             = 0.35" in shown.stdout
            assert "last change from control:dreamcam set" in shown.stdout
            assert "app: running, paused" in shown.stdout and "status: in " in shown.stdout
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "stopped" in out
        # without -v: one line per applied change, naming the field, old -> new and the surface
        changes = [line for line in err.splitlines() if "settings from control:dreamcam set" in line]
        assert len(changes) == 2, err
        assert "prompt 'a vivid watercolor" in changes[0] and "-> 'a paper boat'" in changes[0]
        assert "strength 0.5 -> 0.35" in changes[0] and "paused False -> True" in changes[0]
        assert "width 64 -> 96" in changes[1] and "height 64 -> 48" in changes[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_set_and_token_with_a_real_control_server(tmp_path, monkeypatch):
    """The real `dreamcam set` and `dreamcam token` against a control server of a running app
    (pass-through processor) in this process: the token they read is the one it requires."""
    from dreamcam.plugin import secret
    from dreamcam.plugin.app import DreamcamApp
    from dreamcam.plugin.control_server import ControlServer
    from dreamcam.plugin.processor import PassThrough
    from dreamcam.plugin.settings import AppSettings, StreamSettings
    from dreamcam.plugin.sinks import NullSink

    monkeypatch.setenv("DREAMCAM_CONFIG_DIR", str(tmp_path / "cfg"))
    app = DreamcamApp(AppSettings(control_port=0), StreamSettings(prompt="start", width=64, height=64),
                      sink=NullSink(), processor=PassThrough())
    server = ControlServer(app.store, app.board, port=0)
    app.add_service(server)
    app.start()
    try:
        port = str(server.port)
        printed = run_cli("token")
        assert printed.returncode == 0 and printed.stdout.strip() == secret.secret_path().read_text().strip()
        assert run_cli("token", "--path").stdout.strip() == str(tmp_path / "cfg" / "control-token")
        result = run_cli("set", "prompt=a paper boat", "seed=7", "--port", port)
        assert result.returncode == 0 and "prompt='a paper boat'" in result.stdout, result.stderr
        assert app.store.current.prompt == "a paper boat" and app.store.current.seed == 7
        other = {"DREAMCAM_CONFIG_DIR": str(tmp_path / "other")}
        no_token = run_cli("set", "prompt=intruder", "--port", port, env=other)
        assert no_token.returncode == 1 and "no control token at" in no_token.stderr  # a client makes none
        assert not (tmp_path / "other").exists()
        assert run_cli("token", env=other).returncode == 0  # another install's token
        stranger = run_cli("set", "prompt=intruder", "--port", port, env=other)
        assert stranger.returncode == 1 and "unauthorized" in stranger.stderr
        assert str(tmp_path / "cfg" / "control-token") in stranger.stderr  # where the app's token is
        assert len(stranger.stderr.strip().splitlines()) == 1 and "Traceback" not in stranger.stderr
        rotated = run_cli("token", "--rotate")
        assert rotated.returncode == 0 and rotated.stdout.strip() != printed.stdout.strip()
        assert "made a new control token" in rotated.stderr
        assert run_cli("set", "prompt=after rotation", "--port", port).returncode == 0  # no restart needed
        assert app.store.current.prompt == "after rotation"
    finally:
        app.stop()


def test_two_apps_started_at_the_same_instant_one_clear_line_for_the_loser(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("DREAMCAM_CONFIG_DIR", str(tmp_path / "cfg"))
    port = free_port()
    args = dreamcam("run", "--model", str(tiny_model_dir), "--tiny-vae", str(tiny_model_dir / "taesd"),
                    "--device", "cpu", "--engine", "eager", "--size", "64", "--sink", "null",
                    "--control-port", str(port), "--web-port", "0")
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert wait_for(lambda: any(p.poll() is not None for p in procs), timeout=60, step=0.1)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        out, err = loser.communicate(timeout=10)
        assert loser.returncode == 1, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"control port 127.0.0.1:{port} is in use: another Dreamcam is running" in lines[0]
        assert "--control-port" in lines[0]
        assert winner.poll() is None and send_event(encode("hello"), port=port)["ok"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_set_without_a_running_app_says_how_to_start_one():
    result = run_cli("set", "prompt=x", "--port", str(free_port()))
    assert result.returncode == 1 and "dreamcam run" in result.stderr
    unknown = run_cli("set", "colour=red", "--port", str(free_port()))
    assert unknown.returncode == 2 and "colour: unknown setting" in unknown.stderr


def test_presets_from_the_command_line(tmp_path):
    env = {"DREAMCAM_CONFIG_DIR": str(tmp_path)}
    assert run_cli("preset", "save", "Ink", "prompt=black ink", "strength=0.7", env=env).returncode == 0
    assert "Ink" in run_cli("preset", "list", env=env).stdout
    assert '"strength": 0.7' in run_cli("preset", "show", "Ink", env=env).stdout
    bad = run_cli("preset", "save", "Bad", "strength=3", env=env)
    assert bad.returncode == 2 and "strength" in bad.stderr
    odd = run_cli("preset", "show", ":abc:", env=env)  # a rich emoji code: must print as typed
    assert odd.returncode == 2 and "':abc:'" in odd.stderr, odd.stderr


def test_doctor_and_devices_explain_what_is_missing():
    doctor = run_cli("doctor")
    assert "CUDA GPU" in doctor.stdout and "virtual camera" in doctor.stdout
    assert 'pip install "dreamcam[tensorrt]"' in doctor.stdout.replace("\n", " ") or "ok  TensorRT" in doctor.stdout
    assert "modprobe v4l2loopback" in doctor.stdout or doctor.returncode == 0
    devices = run_cli("devices", env={"DISPLAY": ""})
    assert devices.returncode == 0
    assert "Monitors" in devices.stdout and "Virtual camera backends" in devices.stdout


def test_run_fails_fast_and_clearly_without_a_virtual_camera_or_a_model(tmp_path):
    start = time.monotonic()
    result = run_cli("run", "--sink", "vcam", "--model", str(tmp_path / "no-model"), "--control-port", "0")
    assert result.returncode == 1
    assert "virtual camera" in result.stderr and "modprobe v4l2loopback" in result.stderr
    assert time.monotonic() - start < 20
    result = run_cli("run", "--sink", "null", "--model", str(tmp_path / "no-model"), "--device", "cpu", "--control-port", "0")
    assert result.returncode == 1
    assert "could not build the pipeline" in result.stderr and "no-model" in result.stderr
    result = run_cli("run", "--source", "camera:9", "--sink", "null", "--control-port", "0")
    assert result.returncode == 1 and "camera:9: cannot open" in result.stderr
    import socket

    with socket.socket() as taken:  # another app holds the control port: said before the model load
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli("run", "--sink", "null", "--model", str(tmp_path / "no-model"), "--control-port", port, "--web-port", "0")
    assert result.returncode == 1 and f"control port 127.0.0.1:{port} is in use" in result.stderr


def _bench(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """The real benchmark at its smallest: CPU, tiny widths, no variants (the floor only)."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "COLUMNS": "400"}
    return subprocess.run(dreamcam("bench", "--small", "--variants=", "--skip-reference", *args), cwd=tmp_path,
                          capture_output=True, text=True, timeout=180, env=env)


def test_bench_writes_its_results_to_the_user_data_folder_not_the_checkout(tmp_path):
    import json
    from pathlib import Path

    checkout_json = Path(__file__).resolve().parents[1] / "bench-results.json"
    before = checkout_json.stat().st_mtime_ns if checkout_json.exists() else None
    result = _bench(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    written = list((tmp_path / "data" / "dreamcam" / "bench").glob("bench-*.json"))
    assert len(written) == 1 and "env" in json.loads(written[0].read_text())
    assert f"bench results: {written[0]}" in result.stdout
    after = checkout_json.stat().st_mtime_ns if checkout_json.exists() else None
    assert after == before  # nothing written into the source checkout
    result = _bench(tmp_path, "--json", "mine.json")  # a relative --json means the user's folder
    assert result.returncode == 0, result.stderr[-2000:]
    assert "env" in json.loads((tmp_path / "mine.json").read_text())
    assert f"bench results: {tmp_path / 'mine.json'}" in result.stdout
    assert len(list((tmp_path / "data" / "dreamcam" / "bench").glob("*.json"))) == 1


def test_ctrl_c_during_the_model_load_says_so_and_exits_130(tiny_model_dir, capsys):
    """A real SIGINT (what Ctrl+C sends) arrives as the real tiny model starts loading."""
    import pytest
    import typer

    from dreamcam.plugin.cli import _run_app
    from dreamcam.plugin.pipeline import build_processor
    from dreamcam.plugin.settings import AppSettings, StreamSettings

    def build_interrupted(app_settings, stream_settings, progress):
        def step(text: str) -> None:
            progress(text)
            signal.raise_signal(signal.SIGINT)  # the default handler raises KeyboardInterrupt here

        return build_processor(app_settings, stream_settings, progress=step)

    app_settings = AppSettings(source="pattern", sink="null", model=str(tiny_model_dir),
                               tiny_vae=str(tiny_model_dir / "taesd"), device="cpu", dtype="float32",
                               engine="eager", control_port=0, web_port=0)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(typer.Exit) as stopped:
            _run_app(app_settings, StreamSettings(width=64, height=64), obs=False, frames=2, build=build_interrupted)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stopped.value.exit_code == 130
    stderr = " ".join(capsys.readouterr().err.split())
    assert "interrupted while loading the model; nothing was started." in stderr
    assert "Traceback" not in stderr


def test_the_control_port_answers_during_the_load_and_is_given_back_after_a_failed_start(tmp_path, monkeypatch):
    """`dreamcam run`'s own start-up (`_run_app`, in this process): `set`-style changes sent while the
    model loads are applied to what the stream starts with; a load that fails stops the server."""
    import pytest
    import typer

    from dreamcam.plugin.cli import _run_app
    from dreamcam.plugin.control_server import bind_listener, send_settings
    from dreamcam.plugin.processor import PassThrough
    from dreamcam.plugin.settings import AppSettings, StreamSettings
    from plugin_helpers import dreamcam_threads

    monkeypatch.setenv("DREAMCAM_CONFIG_DIR", str(tmp_path / "cfg"))
    port = free_port()
    app_settings = AppSettings(source="pattern", sink="null", control_port=port)
    replies = []

    def loading(app_settings, stream_settings, progress):
        replies.append(send_settings({"prompt": "sent during the load"}, port=port))
        return PassThrough()

    _run_app(app_settings, StreamSettings(prompt="start", width=64, height=64), obs=False, frames=3, build=loading)
    assert replies[0]["ok"] and replies[0]["status"]["running"] is False
    assert replies[0]["settings"]["prompt"] == "sent during the load"

    def failing(app_settings, stream_settings, progress):
        assert send_settings({"prompt": "x"}, port=port)["ok"]  # served while loading
        raise RuntimeError("no model here")

    with pytest.raises(typer.Exit):
        _run_app(app_settings, StreamSettings(width=64, height=64), obs=False, frames=3, build=failing)
    assert dreamcam_threads() == []
    bind_listener("127.0.0.1", port).close()  # the port is free again
