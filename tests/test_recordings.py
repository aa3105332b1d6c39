"""Recordings that survive: real files, a real file-size limit (RLIMIT_FSIZE in a child process:
the same EFBIG a full disk gives), real threads for the failure policy, real timestamps."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import time

import av
import numpy as np
import pytest

from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.sinks import SinkError, SinkFailed, make_sink
from dreamcam.plugin.sinks.guard import SinkGuard
from dreamcam.plugin.sinks.images import ImageSequenceSink
from dreamcam.plugin.sinks.video import VideoFileSink, count_packets
from dreamcam.plugin.sources.pattern import PatternSource, read_index
from plugin_helpers import wait_for


def decode_all(path) -> list[av.VideoFrame]:
    """Every frame of the file; fails the test if any packet does not decode."""
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


# ---- a full disk ---------------------------------------------------------------------------
FILL_UP = textwrap.dedent("""
    import json, resource, signal, sys
    import numpy as np
    from dreamcam.plugin.sinks import SinkFailed
    from dreamcam.plugin.sinks.video import VideoFileSink

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sink = VideoFileSink(sys.argv[1], 64, 64, 30.0)
    sink.open()
    rng = np.random.default_rng(0)
    error, tries = "", 0
    try:
        for tries in range(5000):
            sink.write(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # noise: big packets
    except SinkFailed as exc:
        error = str(exc)
    closed = ""
    try:
        sink.close()
    except SinkFailed as exc:
        closed = str(exc)
    print(json.dumps({"error": error, "closed": closed, "frames": sink.frames_written, "tries": tries}))
""")


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_full_disk_stops_the_recording_and_keeps_every_frame_it_reports(tmp_path, suffix):
    path = tmp_path / f"full{suffix}"
    limit = 150_000
    result = subprocess.run([sys.executable, "-c", FILL_UP, str(path), str(limit)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "the disk is full" in report["error"] and f"{report['frames']} frames are in the file" in report["error"]
    assert report["tries"] < 4999 and report["closed"] == ""  # it stopped at the limit; close adds nothing
    assert 0 < path.stat().st_size <= limit
    frames = decode_all(path)  # the file was cut back to whole fragments: everything decodes
    assert report["frames"] > 10 and len(frames) == report["frames"] == count_packets(path)


def test_a_recording_whose_file_is_deleted_stops_and_says_so(tmp_path):
    path = tmp_path / "gone.mp4"
    sink = VideoFileSink(path, 64, 64, 30.0)
    sink.open()
    pattern = PatternSource(64, 64)
    sink.write(pattern.render(0))
    path.unlink()
    with pytest.raises(SinkFailed, match="deleted or replaced while recording"):
        for i in range(1, 200):
            sink.write(pattern.render(i))
            time.sleep(0.01)  # a keyframe (and the check) comes each second


# ---- crash safety and real time --------------------------------------------------------------
CRASH = textwrap.dedent("""
    import os, sys, time
    from dreamcam.plugin.sinks.video import VideoFileSink
    from dreamcam.plugin.sources.pattern import PatternSource

    sink = VideoFileSink(sys.argv[1], 64, 64, 30.0)
    sink.open()
    pattern = PatternSource(64, 64)
    for i in range(100000):
        sink.write(pattern.render(i))
        print(i, flush=True)
        time.sleep(0.05)  # 20 frames a second, stamped as they come (the sink's nominal rate is 30)
""")


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_recording_killed_with_sigkill_is_readable_and_plays_at_real_speed(tmp_path, suffix):
    path = tmp_path / f"crash{suffix}"
    proc = subprocess.Popen([sys.executable, "-c", CRASH, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        written = -1
        while written < 70:  # about 3.5 s of recording
            line = proc.stdout.readline()
            assert line, "the recording child ended early"
            written = int(line)
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    frames = decode_all(path)
    # whole fragments survive: everything but the last second at most
    assert written - 25 <= len(frames) <= written + 1
    indices = [read_index(f.to_ndarray(format="rgb24")) for f in frames]
    assert indices == list(range(len(frames)))  # in order, none missing in between
    times = [float(f.time) for f in frames]
    assert all(b > a for a, b in zip(times, times[1:]))
    per_frame = (times[-1] - times[0]) / (len(times) - 1)
    assert 0.045 < per_frame < 0.08, per_frame  # stamped at the real 20 fps, not played as 30 fps


def test_an_existing_file_is_not_replaced_without_overwrite(tmp_path):
    path = tmp_path / "take1.mp4"
    path.write_bytes(b"an earlier recording")
    with pytest.raises(SinkError, match="already exists; pass --overwrite"):
        make_sink(f"file:{path}", width=64, height=64, fps=30).open()
    assert path.read_bytes() == b"an earlier recording"
    sink = make_sink(f"file:{path}", width=64, height=64, fps=30, overwrite=True, max_frames=3)
    sink.open()
    for i in range(3):
        sink.write(PatternSource(64, 64).render(i))
    sink.close()
    assert len(decode_all(path)) == 3
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "frame_000000.png").write_bytes(b"kept")
    with pytest.raises(SinkError, match="already holds frames; pass --overwrite"):
        make_sink(f"images:{folder}", width=64, height=64, fps=30).open()


def test_a_file_that_got_no_frame_is_removed_at_close(tmp_path):
    path = tmp_path / "never.mp4"
    sink = VideoFileSink(path, 64, 64, 30.0)
    sink.open()
    sink.close()  # e.g. the model failed to load after the sink was opened
    assert not path.exists()
    sink = VideoFileSink(path, 64, 64, 30.0)
    sink.open()  # and the next run is not refused because of an empty stub
    sink.close()


# ---- the failure policy ----------------------------------------------------------------------
def _image_app(folder, fps=30.0) -> DreamcamApp:
    settings = AppSettings(fps=fps, control_port=0, sink=f"images:{folder}")
    return DreamcamApp(settings, StreamSettings(width=64, height=64), source=PatternSource(64, 64, fps),
                       processor=PassThrough(), sink=ImageSequenceSink(folder))


def test_a_deleted_images_folder_is_made_again_and_frames_go_on(tmp_path):
    folder = tmp_path / "frames"
    app = _image_app(folder)
    app.start()
    try:
        assert wait_for(lambda: len(list(folder.glob("*.png"))) >= 5)
        shutil.rmtree(folder)
        assert wait_for(lambda: folder.is_dir() and len(list(folder.glob("*.png"))) >= 5, timeout=10)
    finally:
        app.stop()
    names = sorted(p.name for p in folder.glob("*"))
    assert names and all(n.endswith(".png") for n in names)  # no partial files left behind
    assert not app.runner.sink_guard.failed and app.runner.sink_guard.error == ""


def test_a_failing_sink_reports_once_retries_with_back_off_and_comes_back(tmp_path, caplog):
    folder = tmp_path / "frames"
    app = _image_app(folder)
    caplog.set_level(logging.WARNING)
    app.start()
    try:
        assert wait_for(lambda: len(list(folder.glob("*.png"))) >= 3)
        shutil.rmtree(folder)
        folder.write_text("a file where the folder was: it cannot be made again")
        assert wait_for(lambda: "failing" in app.board.latest().error, timeout=5)
        time.sleep(3)  # 90 frames at 30 fps
        guard = app.runner.sink_guard
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert sum("output images failing (" in line for line in lines) == 1, lines  # once, not per frame
        assert len(lines) <= 2, lines  # + at most "is gone; making it again"
        assert guard.dropped > 50  # frames in between were dropped, not each retried
        folder.unlink()
        assert wait_for(lambda: folder.is_dir() and len(list(folder.glob("*.png"))) >= 3, timeout=10)
        assert wait_for(lambda: app.board.latest().error == "", timeout=5)
        assert any("works again" in r.getMessage() for r in caplog.records)
    finally:
        app.stop()


def test_the_guard_backs_off_between_retries():
    class Broken:
        name = "broken"
        attempts = 0

        def write(self, image):
            Broken.attempts += 1
            raise SinkError("cannot write")

        def close(self):
            pass

    clock = [0.0]
    guard = SinkGuard(Broken(), clock=lambda: clock[0])
    image = np.zeros((8, 8, 3), np.uint8)
    for _ in range(300):  # 10 s of frames at 30 fps
        guard.write(image)
        clock[0] += 1 / 30
    assert 5 <= Broken.attempts <= 8  # 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5 s apart
    assert guard.error.startswith("output broken failing (cannot write)") and not guard.failed


def test_a_sink_that_fails_for_good_ends_the_run(tmp_path):
    class FullDisk(ImageSequenceSink):
        def write(self, image):
            raise SinkFailed("video file x.mp4: the disk is full; recording stopped, 0 frames are in the file")

    settings = AppSettings(fps=30, control_port=0)
    app = DreamcamApp(settings, StreamSettings(width=64, height=64), source=PatternSource(64, 64, 30),
                      processor=PassThrough(),
                      sink=FullDisk(tmp_path / "f"))
    app.start()
    try:
        assert app.wait(timeout=5)  # the runner finished by itself
        assert "the disk is full" in app.board.latest().error or "the disk is full" in app.runner.error_text()
    finally:
        app.stop()
    assert app.runner.sink_guard.failed
