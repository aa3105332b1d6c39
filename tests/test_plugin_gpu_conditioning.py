"""ControlNet and LoRA slots on a CUDA GPU (tiny model, fp16, CUDA graphs): live weights and scales
replay the captured graph (no recapture), a LoRA added in the background or a net switched off
recaptures once, and the stream never stops. Run with `-m gpu` on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest

from app_parts import RecordingSink, StillCamera
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.pipeline import build_processor
from dreamcam.plugin.settings import AppSettings, StreamSettings
from plugin_helpers import dreamcam_threads, wait_for
from test_plugin_conditioning import frames_after, models, settled  # noqa: F401 (fixture)

pytestmark = pytest.mark.gpu
SIZE = 256


def changed(a, b) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).mean() > 0.05


@pytest.mark.parametrize("frames_in_flight", [1, 3])
def test_live_weights_and_scales_keep_the_graph_and_new_sources_recapture(tiny_model_dir, models, frames_in_flight):
    import torch

    assert torch.cuda.is_available(), "this test needs a CUDA GPU"
    settings = AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cuda",
                           dtype="float16", engine="eager", control_port=0, web_port=0,
                           frames_in_flight=frames_in_flight)
    initial = StreamSettings(similarity_filter=False, width=SIZE, height=SIZE, lora_1=models["lora_a"], lora_1_weight=0.7,
                             controlnet_1=f"canny:{models['controlnet']}", canny_low=20.0, canny_high=60.0)
    processor = build_processor(settings, initial, local_files_only=True)
    sink = RecordingSink()
    app = DreamcamApp(settings, initial, source=StillCamera(SIZE, SIZE, fps=60), sink=sink, processor=processor)
    app.start()
    graphed = processor.driver.graphed
    try:
        first = settled(sink, app)
        captures = graphed.captures
        assert captures >= 1
        app.store.apply({"lora_1_weight": 0.1, "controlnet_1_scale": 0.3}, origin="test")
        moved = settled(sink, app)
        assert changed(moved, first) and graphed.captures == captures  # in place: the same graph replays

        app.store.apply({"lora_2": models["lora_b"]}, origin="test")  # loads in the background
        assert wait_for(lambda: len(processor.conditioner.loras.weights) == 2, timeout=60)
        frames_after(sink, 10)
        assert graphed.captures == captures + 1  # a new adapter: one recapture
        assert changed(settled(sink, app), moved)

        app.store.apply({"controlnet_1_scale": 0.0}, origin="test")  # the net stops running
        frames_after(sink, 10)
        assert graphed.captures == captures + 2
        status = app.runner.status()
        print(f"frames_in_flight={frames_in_flight} {status}")
        assert status.error == "" and status.graph == ""
    finally:
        assert app.stop()
    assert dreamcam_threads() == []
