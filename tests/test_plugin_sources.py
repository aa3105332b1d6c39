"""Sources through the real libraries: OpenCV VideoCapture on a video file, PyAV, mss under Xvfb."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from dreamcam.plugin.sinks.video import VideoFileSink
from dreamcam.plugin.sources.camera import CameraSource
from dreamcam.plugin.sources.pattern import PatternSource, read_index
from dreamcam.plugin.sources.screen import ScreenSource, parse_screen_arg
from dreamcam.plugin.sources import SourceError, make_source

from plugin_helpers import xvfb  # noqa: F401 (fixture)

W, H = 128, 96


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 30-frame video of the test pattern (frame index drawn in it), written with PyAV."""
    path = tmp_path_factory.mktemp("clip") / "pattern.mp4"
    pattern = PatternSource(W, H, 1000)
    sink = VideoFileSink(path, W, H, 30.0, codec="libx264", realtime=False)  # a 30 fps clip
    sink.open()
    for i in range(30):
        sink.write(pattern.render(i))
    sink.close()
    return path


def test_camera_source_reads_through_opencv_videocapture(clip):
    source = CameraSource(str(clip), width=W, height=H, fps=30)
    source.open()
    try:
        frames = [source.read() for _ in range(12)]
    finally:
        source.close()
    assert frames[0].image.shape == (H, W, 3) and frames[0].image.dtype == np.uint8
    assert [read_index(f.image) for f in frames] == list(range(12))
    assert [f.index for f in frames] == list(range(12))
    assert all(b.t_capture >= a.t_capture for a, b in zip(frames, frames[1:]))
    # colours arrive as RGB (OpenCV gives BGR): the bright square is white and the bits survive
    first = PatternSource(W, H).render(0).astype(int)
    assert np.abs(frames[0].image.astype(int) - first).mean() < 12


def test_camera_that_is_not_there_fails_at_start_with_a_clear_error():
    source = CameraSource(7)
    with pytest.raises(SourceError, match="camera:7: cannot open.*connected"):
        source.open()


def test_camera_stream_that_ends_raises_source_error(clip):
    source = CameraSource(str(clip))
    source.open()
    with pytest.raises(SourceError, match="no frames"):
        for _ in range(40):
            source.read()
    source.close()


def test_video_file_source_loops_at_its_own_rate(clip):
    source = make_source(f"file:{clip}")
    source.open()
    start = time.monotonic()
    frames = [source.read() for _ in range(35)]
    elapsed = time.monotonic() - start
    source.close()
    indices = [read_index(f.image) for f in frames]
    assert indices[:30] == list(range(30)) and indices[30:] == list(range(5))
    assert 34 / 30 * 0.8 < elapsed < 34 / 30 * 1.5


def test_missing_video_file_fails_at_start(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        make_source(f"file:{tmp_path / 'nope.mp4'}").open()
    with pytest.raises(SourceError, match="is a folder"):
        make_source(f"file:{tmp_path}").open()


def test_source_specs():
    assert parse_screen_arg("") == (1, None)
    assert parse_screen_arg("2") == (2, None)
    assert parse_screen_arg("10,20,300,200") == (1, (10, 20, 300, 200))
    with pytest.raises(SourceError, match="x,y,w,h"):
        parse_screen_arg("1,2,3")
    with pytest.raises(SourceError, match="unknown kind 'webcam'"):
        make_source("webcam")


def test_screen_source_captures_a_monitor_and_a_region_under_xvfb(xvfb):
    whole = ScreenSource(monitor=1, fps=20)
    whole.open()
    frames = [whole.read() for _ in range(5)]
    whole.close()
    assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
    assert [f.index for f in frames] == list(range(5))
    span = frames[-1].t_capture - frames[0].t_capture
    assert 4 / 20 * 0.8 < span < 4 / 20 * 2

    region = make_source("screen:10,20,64,48", fps=30)
    region.open()
    assert region.read().image.shape == (48, 64, 3)
    region.close()

    with pytest.raises(SourceError, match="monitor 5 does not exist"):
        ScreenSource(monitor=5).open()


def test_screen_source_without_a_display_says_so(monkeypatch):
    monkeypatch.setenv("DISPLAY", ":189")
    with pytest.raises(SourceError, match="screen"):
        ScreenSource().open()


def package_imports(folder: str) -> dict[str, set[str]]:
    """module -> the modules of its own package that it imports (relative imports, any depth)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "plugin" / folder
    found = {}
    for path in root.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names.add(node.module or "")
            elif isinstance(node, ast.ImportFrom) and node.level == 2 and node.module == folder:
                names.add("")  # `from ..sources import x`: the package itself
        found[path.stem] = names
    return found


def test_source_kinds_import_only_the_base_module():
    imports = package_imports("sources")
    assert {"base", "spec", "pattern", "screen", "camera", "video"} <= set(imports)
    for kind in ("pattern", "screen", "camera", "video"):
        assert imports[kind] <= {"base"}, (kind, imports[kind])
    assert imports["base"] == set() and imports["spec"] <= {"base", "pattern", "screen", "camera", "video"}
