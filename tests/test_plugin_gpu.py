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
                           dtype="float16", engine=engine, width=256, height=256, fps=30, control_port=0,
                           frames_in_flight=frames_in_flight)
    processor = build_processor(settings, StreamSettings(similarity_filter=False), local_files_only=True)
    assert processor.device.type == "cuda"
    assert processor.lanes == frames_in_flight
    sink = NullSink()
    app = DreamcamApp(settings, StreamSettings(similarity_filter=False), source=PatternSource(256, 256, 60),
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
