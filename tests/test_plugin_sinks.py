"""Sinks: the virtual camera's errors and pacing contract, video files, image sequences."""

from __future__ import annotations

import av
import numpy as np
import pytest

from dreamcam.plugin.sinks.vcam import VirtualCameraSink, install_hint
from dreamcam.plugin.sinks.images import ImageSequenceSink
from dreamcam.plugin.sinks.video import VideoFileSink
from dreamcam.plugin.sinks import SinkError, make_sink
from dreamcam.plugin.sources.pattern import PatternSource, read_index
from plugin_helpers import no_recorder_left_behind, xvfb  # noqa: F401 (fixtures)
from plugin_helpers import BACKEND, register_recorder


def test_virtual_camera_without_a_driver_says_what_to_install():
    # this machine has pyvirtualcam's v4l2loopback backend but no loopback device
    sink = VirtualCameraSink(64, 64, 30, backend="v4l2loopback")
    with pytest.raises(SinkError) as info:
        sink.open()
    text = str(info.value)
    assert "v4l2loopback" in text and "modprobe v4l2loopback" in text and "apt install" in text


def test_install_hints_per_platform():
    assert "OBS Virtual Camera" in install_hint("win32") and "Unity Capture" in install_hint("win32")
    assert "OBS Studio 30" in install_hint("darwin")
    assert "modprobe v4l2loopback" in install_hint("linux")


def test_unknown_backend_is_named():
    with pytest.raises(SinkError, match="unknown backend 'nope'"):
        VirtualCameraSink(64, 64, 30, backend="nope").open()


def test_virtual_camera_sends_rgb_frames_through_pyvirtualcam_and_closes_once():
    recorder = register_recorder()
    sink = make_sink(f"vcam:{BACKEND}", width=64, height=48, fps=30)
    assert sink.fps == 30 and sink.repeat_last
    sink.open()
    image = PatternSource(64, 48).render(5)
    sink.write(image)
    sink.close()
    sink.write(image)  # after close: ignored
    backend = recorder.instances[0]
    assert len(backend.frames) == 1 and np.array_equal(backend.frames[0][1], image)
    assert backend.closed == 1 and sink.device_name == ""


def test_video_file_sink_writes_every_frame_up_to_max(tmp_path):
    path = tmp_path / "out.mp4"
    sink = make_sink(f"file:{path}", width=64, height=64, fps=24, max_frames=7)
    sink.open()
    pattern = PatternSource(64, 64)
    for i in range(10):
        sink.write(pattern.render(i))
    assert sink.done
    sink.close()
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 7
    assert [read_index(f) for f in frames] == list(range(7))


def test_video_file_sink_in_missing_folder_fails_at_open(tmp_path):
    with pytest.raises(SinkError, match="does not exist"):
        VideoFileSink(tmp_path / "no" / "x.mp4", 64, 64, 30).open()


def test_image_sequence_sink(tmp_path):
    from PIL import Image

    sink = ImageSequenceSink(tmp_path / "frames", max_frames=3)
    sink.open()
    pattern = PatternSource(64, 64)
    for i in range(5):
        sink.write(pattern.render(i))
    sink.close()
    files = sorted((tmp_path / "frames").glob("*.png"))
    assert [f.name for f in files] == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    assert read_index(np.asarray(Image.open(files[2]))) == 2


def test_null_sink_stops_after_max_frames():
    sink = make_sink("null", width=64, height=64, fps=30, max_frames=3)
    sink.open()
    for _ in range(5):
        sink.write(np.zeros((64, 64, 3), np.uint8))
    assert sink.done and sink.frames_written == 3
    assert not make_sink("null", width=64, height=64, fps=30).done


def test_unknown_sink_kind():
    with pytest.raises(SinkError, match="unknown kind 'tv'"):
        make_sink("tv", width=64, height=64, fps=30)


def test_preview_without_a_gui_says_what_it_needs(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    from dreamcam.plugin.sinks.preview import PreviewSink

    sink = PreviewSink()
    try:
        sink.open()
    except SinkError as exc:
        assert "preview: no display" in str(exc)
    else:  # a GUI build of OpenCV with a display: it must show frames
        sink.write(np.zeros((32, 32, 3), np.uint8))
        sink.close()


def test_preview_window_shows_frames_under_xvfb(xvfb):
    import subprocess
    import sys

    script = ("import numpy as np\n"
              "from dreamcam.plugin.sinks import make_sink\n"
              "sink = make_sink('preview', width=64, height=64, fps=30)\n"
              "sink.open()\n"
              "for i in range(5):\n"
              "    sink.write(np.full((64, 64, 3), i * 40, np.uint8))\n"
              "sink.close()\n"
              "print('shown')\n")
    # its own process: a GUI toolkit must not stay behind in the test process
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    if "preview: no window" in result.stderr:  # a headless OpenCV build: the error says what to install
        assert "opencv-python" in result.stderr
    else:
        assert result.returncode == 0 and "shown" in result.stdout, result.stderr


def test_sink_kinds_import_only_the_base_module():
    from test_plugin_sources import package_imports

    imports = package_imports("sinks")
    for kind in ("null", "vcam", "video", "images", "preview"):
        assert imports[kind] <= {"base"}, (kind, imports[kind])
    assert imports["base"] == set()
