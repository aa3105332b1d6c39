"""The app on a CUDA GPU (tiny model, fp16, engine auto): run with `-m gpu` on a GPU machine."""

from __future__ import annotations

import pytest

from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.pipeline import build_processor
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.sinks import NullSink
from dreamcam.plugin.sources.pattern import PatternSource
from plugin_helpers import dreamcam_threads, wait_for

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("frames_in_flight", [1, 3])
def test_app_runs_on_the_gpu(tiny_model_dir, frames_in_flight, engine="eager"):
    # engine="auto" builds a torch.compile engine first (minutes); the engines' own tests cover it
    import torch

    assert torch.cuda.is_available(), "this test needs a CUDA GPU"
    settings = AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="auto",
                           dtype="float16", engine=engine, fps=30, control_port=0,
                           frames_in_flight=frames_in_flight)
    initial = StreamSettings(similarity_filter=False, width=256, height=256)
    processor = build_processor(settings, initial, local_files_only=True)
    assert processor.device.type == "cuda"
    assert processor.lanes == frames_in_flight
    sink = NullSink()
    app = DreamcamApp(settings, initial, source=PatternSource(256, 256, 60),
                      sink=sink, processor=processor)
    app.start()
    try:
        assert wait_for(lambda: sink.frames_written >= 60, timeout=120)
        app.store.apply({"prompt": "a new prompt", "steps": 2}, origin="test")
        written = sink.frames_written
        assert wait_for(lambda: sink.frames_written >= written + 30, timeout=60)
        status = app.runner.status()
        print(f"engine={processor.engine_name} {status}")
        assert status.error == "" and status.graph == ""  # the step runs as CUDA graphs
        assert processor.config.prompt == "a new prompt" and processor.config.num_steps == 2
    finally:
        assert app.stop()
    assert dreamcam_threads() == []


def test_a_live_size_change_under_the_compiled_engine_keeps_frames_coming_and_captures_the_new_size(
        tiny_model_dir, tmp_path, monkeypatch):
    """The compiled engine and the CUDA graph driver across a live size change: the eager twins serve
    the new size while it compiles in the background (frames keep coming, at the sink's size), then the
    step at the new size is captured in a graph and no graph error is left."""
    import torch

    from app_parts import RecordingSink
    from dreamcam.engines import background

    assert torch.cuda.is_available(), "this test needs a CUDA GPU"
    monkeypatch.setenv("DREAMCAM_ENGINE_CACHE", str(tmp_path / "cache"))  # compiled here, not from an old cache
    settings = AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cuda",
                           dtype="float16", engine="compiled", control_port=0, web_port=0)
    initial = StreamSettings(similarity_filter=False, width=64, height=64)
    processor = build_processor(settings, initial, local_files_only=True)
    assert processor.engine_name == "compiled"
    graphed = processor.driver.graphed
    sink = RecordingSink()
    app = DreamcamApp(settings, initial, source=PatternSource(64, 64, 60), sink=sink, processor=processor)
    app.start()
    try:
        assert wait_for(lambda: graphed.captures == 1 and sink.count() >= 20, timeout=300), app.runner.error_text()
        app.store.apply({"width": 96, "height": 48}, origin="test")
        version = app.store.version
        assert wait_for(lambda: any(m["settings_version"] == version for _, m in list(app.runner.history)), 60)
        assert background.compiling()  # that frame came from the eager modules: the new size still compiles
        during = sink.count()
        assert background.wait_idle(600)
        assert sink.count() > during + 5, (during, sink.count())  # frames kept coming while it compiled
        assert graphed.stand_in_captures >= 1  # from the eager modules in a graph (not a thousand launches a frame)
        assert wait_for(lambda: graphed.captures == 2 and processor.graph_warning == "", timeout=60), \
            processor.graph_warning
        written = sink.count()
        assert wait_for(lambda: sink.count() >= written + 30, timeout=60)
        status = app.runner.status()
        lanes, shape = graphed.active_lanes, processor.stream.shape_key  # before the stop releases the graphs
    finally:
        assert app.stop()
    assert status.error == "" and status.graph == ""
    assert graphed.capture_error is None and processor.driver.graph_status().error is None
    assert lanes == 1 and shape[4:6] == (48, 96)  # captured at the new size
    assert all(meta["size"] == (96, 48) for _, meta in list(app.runner.history) if meta["settings_version"] >= version)
    assert all(image.shape == (64, 64, 3) for _, image in sink.frames)
    assert dreamcam_threads() == []
