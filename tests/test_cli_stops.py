"""`dreamcam run` stopped every way a user (or the machine) stops it, as real subprocesses on the
tiny model: Ctrl+C (a real SIGINT) during the load, just after it and while streaming; `kill -9`
of a recording; a disk that fills up (RLIMIT_FSIZE); and the checks made before the model loads."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time

import av
import pytest

from dreamcam.plugin.sinks.video import count_packets
from test_cli import dreamcam, run_cli

STARTED = "Ctrl+C stops"


class RunningApp:
    """`dreamcam run` in a subprocess whose output lines are collected as they come."""

    def __init__(self, *args: str, preexec_fn=None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
        self.proc = subprocess.Popen(dreamcam("run", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, preexec_fn=preexec_fn)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_for_line(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.out + self.err):
            assert self.proc.poll() is None, f"ended before {text!r}: {''.join(self.err)[-2000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
            time.sleep(0.02)

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def stdout(self) -> str:
        return " ".join("".join(self.out).split())

    def stderr(self) -> str:
        return " ".join("".join(self.err).split())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def record(model, out, *extra: str) -> tuple[str, ...]:
    return ("--model", str(model), "--device", "cpu", "--engine", "eager", "--size", "64",
            "--sink", f"file:{out}", "--control-port", "0", "--web-port", "0", *extra)


def frames_in(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("moment", ["during the load", "just after the load", "while streaming"])
def test_ctrl_c_at_any_moment_stops_cleanly(tmp_path, tiny_model_dir, moment):
    out = tmp_path / "run.mp4"
    app = RunningApp(*record(tiny_model_dir, out, "-v"))
    try:
        if moment == "during the load":
            app.wait_for_line("loading")  # the first stage of the load, logged with -v
        else:
            app.wait_for_line(STARTED)
            if moment == "while streaming":
                time.sleep(3)
        app.proc.send_signal(signal.SIGINT)
        code = app.finish(timeout=30)  # an interrupt is never lost: the app ends
    finally:
        app.kill()
    assert "Traceback" not in app.stderr(), app.stderr()[-3000:]
    if moment == "during the load":
        assert code == 130, app.stderr()[-2000:]
        assert "interrupted while loading the model; nothing was started." in app.stderr()
        assert not out.exists() and STARTED not in app.stdout()  # nothing started, no empty stub left
    else:
        assert code == 0, app.stderr()[-2000:]
        words = app.stdout().split("stopped: ")[-1].split()
        written = int(words[0])
        assert words[1:4] == ["frames", "written", "to"]
        if moment == "while streaming":
            assert written > 0
        assert (frames_in(out) if out.exists() else 0) == written  # what it says is in the file


def test_kill_9_of_a_recording_app_leaves_a_readable_file(tmp_path, tiny_model_dir):
    out = tmp_path / "crash.mp4"
    app = RunningApp(*record(tiny_model_dir, out))
    try:
        app.wait_for_line(STARTED)
        started = time.monotonic()
        assert_recording = lambda: out.exists() and count_packets(out) >= 3  # noqa: E731
        deadline = started + 60
        while not assert_recording():
            assert time.monotonic() < deadline, "no fragment reached the disk in 60 s"
            time.sleep(0.2)
        time.sleep(2)
        recorded_s = time.monotonic() - started
        app.proc.kill()  # SIGKILL
        app.finish(timeout=10)
    finally:
        app.kill()
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))  # every frame decodes
    assert len(frames) >= 3 and len(frames) == count_packets(out)
    times = [float(f.time) for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    # stamped with real times: the file spans about the time it recorded, not frames / 30 fps
    assert recorded_s - 3 <= times[-1] <= recorded_s + 0.5, (times[-1], recorded_s, len(frames))


def _full_disk(limit: int):
    def limit_file_size() -> None:  # in the child, before exec: a "disk" of `limit` bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # kept across exec: writes get EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_file_size


def test_a_disk_that_fills_up_stops_the_run_with_one_line_and_exit_1(tmp_path, tiny_model_dir):
    out = tmp_path / "full.mp4"
    app = RunningApp(*record(tiny_model_dir, out), preexec_fn=_full_disk(12_000))
    try:
        code = app.finish(timeout=300)  # it ends by itself
    finally:
        app.kill()
    stderr = app.stderr()
    assert code == 1, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped:" not in app.stdout()
    assert stderr.count("error:") == 1 and "the disk is full" in stderr, stderr
    reported = int(stderr.split("recording stopped, ")[1].split()[0])
    assert reported > 0 and frames_in(out) == reported == count_packets(out)
    assert out.stat().st_size <= 12_000


def test_checks_made_before_the_model_loads(tmp_path):
    """Each is one clear line and exit code, long before a model could load (no such model here)."""
    existing = tmp_path / "take1.mp4"
    existing.write_bytes(b"an earlier take")
    no_model = str(tmp_path / "no-model")
    result = run_cli("run", "--model", no_model, "--sink", f"file:{existing}", "--control-port", "0", "--web-port", "0")
    assert result.returncode == 1 and "already exists; pass --overwrite" in " ".join(result.stderr.split())
    assert existing.read_bytes() == b"an earlier take"
    result = run_cli("run", "--model", no_model, "--sink", f"file:{existing}", "--control-port", "0", "--web-port", "0",
                     "--overwrite", "--device", "cpu")
    assert result.returncode == 1 and "no-model" in result.stderr  # past the sink: the model error
    for frames in ("0", "-1"):
        result = run_cli("run", "--sink", "null", "--frames", frames)
        assert result.returncode == 2 and "--frames: must be 1 or more" in result.stderr
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    for config, words in ((tmp_path, "is a folder"), (binary, "is not a text file")):
        result = run_cli("run", "--sink", "null", "--config", str(config))
        stderr = " ".join(result.stderr.split())
        assert result.returncode == 2 and words in stderr and "Traceback" not in stderr, stderr
    result = run_cli("run", "--sink", "null", "--config", str(tmp_path), "--obs-password", "hunter2")
    stderr = " ".join(result.stderr.split())
    assert "DREAMCAM_OBS_PASSWORD" in stderr and "process list" in stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_an_interrupt_swallowed_during_the_load_still_stops(tiny_model_dir, capsys):
    """A real SIGINT during the real tiny model's load, whose KeyboardInterrupt a library swallows
    (what lost 2 of 37 timed interrupts before): the stop request still counts after the load."""
    import typer

    from dreamcam.plugin.cli import _run_app
    from dreamcam.plugin.pipeline import build_processor
    from dreamcam.plugin.settings import AppSettings, StreamSettings

    swallowed = []

    def build_swallowing(app_settings, stream_settings, progress):
        def step(text: str) -> None:
            progress(text)
            if not swallowed:
                try:
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt:  # a careless library
                    swallowed.append(text)

        return build_processor(app_settings, stream_settings, progress=step)

    app_settings = AppSettings(source="pattern", sink="null", model=str(tiny_model_dir), device="cpu",
                               dtype="float32", engine="eager", control_port=0)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(typer.Exit) as stopped:
        _run_app(app_settings, StreamSettings(width=64, height=64), obs=False, frames=2, build=build_swallowing)
    assert signal.getsignal(signal.SIGINT) is previous  # given back
    assert swallowed and stopped.value.exit_code == 130
    stderr = " ".join(capsys.readouterr().err.split())
    assert "interrupted while loading the model; nothing was started." in stderr
