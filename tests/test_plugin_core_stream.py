"""The app around the real core (tiny random model on the CPU): settings reach the next frame."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import pytest

from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.pipeline import build_processor
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.sinks.vcam import VirtualCameraSink
from dreamcam.plugin.sources.pattern import PatternSource, read_index
from plugin_helpers import no_recorder_left_behind  # noqa: F401 (autouse fixture)
from plugin_helpers import BACKEND, dreamcam_threads, register_recorder, wait_for

SIZE = 64
AT_SIZE = StreamSettings(width=SIZE, height=SIZE)


@pytest.fixture(scope="module")
def tiny_app_settings(tiny_model_dir):
    return AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cpu",
                       dtype="float32", engine="eager", fps=20, control_port=0)


def first_processed_after(runner, t):
    for index, meta in list(runner.history):
        if meta["t_start"] > t:
            return index, meta
    return None


def is_passthrough(image, pattern):
    return np.array_equal(image, pattern.render(read_index(image)))


def test_settings_change_is_visible_in_the_next_processed_frame(tiny_app_settings):
    initial = StreamSettings(prompt="a red fox", similarity_filter=False, width=SIZE, height=SIZE)
    processor = build_processor(tiny_app_settings, initial, local_files_only=True)
    recorder = register_recorder()
    pattern = PatternSource(SIZE, SIZE, 15)
    app = DreamcamApp(tiny_app_settings, initial, source=pattern, processor=processor,
                      sink=VirtualCameraSink(SIZE, SIZE, 20, backend=BACKEND))
    app.start()
    try:
        backend = recorder.instances[0]
        assert wait_for(lambda: len(app.runner.history) >= 3, timeout=20)
        assert not any(is_passthrough(img, pattern) for _, img in backend.snapshot()[-3:])

        t_apply = time.monotonic()
        app.store.apply({"paused": True}, origin="test")
        version = app.store.version
        assert wait_for(lambda: first_processed_after(app.runner, t_apply) is not None, timeout=10)
        _, meta = first_processed_after(app.runner, t_apply)
        assert meta["settings_version"] == version and meta["paused"]
        assert wait_for(lambda: is_passthrough(backend.snapshot()[-1][1], pattern), timeout=5)

        t_apply = time.monotonic()
        app.store.apply({"paused": False, "prompt": "a blue whale", "seed": 7}, origin="test")
        version = app.store.version
        assert wait_for(lambda: first_processed_after(app.runner, t_apply) is not None, timeout=10)
        _, meta = first_processed_after(app.runner, t_apply)
        assert meta["settings_version"] == version and not meta["paused"]
        assert processor.config.prompt == "a blue whale" and processor.config.seed == 7
        assert wait_for(lambda: not is_passthrough(backend.snapshot()[-1][1], pattern), timeout=5)
        assert app.runner.status().infer_ms > 0
    finally:
        assert app.stop()
    assert dreamcam_threads() == []


def test_filter_and_steps_map_onto_the_core(tiny_app_settings):
    processor = build_processor(tiny_app_settings, AT_SIZE, local_files_only=True)
    from dreamcam.plugin.processor import core_update

    processor.update(**core_update(replace(AT_SIZE, similarity_filter=False, strength=0.8, steps=3)))
    assert processor.config.similarity_threshold is None
    assert processor.config.num_steps == 3
    processor.update(**core_update(replace(AT_SIZE, t_index_list=(20, 40))))
    assert processor.config.indexes == (20, 40)
    out = processor(np.zeros((SIZE, SIZE, 3), np.uint8))
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8


def test_frames_of_another_size_reach_the_sink_at_the_configured_size(tiny_app_settings):
    """A 160x90 camera: the core fits it (on its device); the sink always gets 64x64."""
    processor = build_processor(tiny_app_settings, AT_SIZE, local_files_only=True)
    recorder = register_recorder()
    app = DreamcamApp(tiny_app_settings, AT_SIZE, source=PatternSource(160, 96, 15),
                      processor=processor, sink=VirtualCameraSink(SIZE, SIZE, 20, backend=BACKEND))
    app.start()
    try:
        assert wait_for(lambda: len(app.runner.history) >= 3, timeout=20)
        app.store.apply({"paused": True}, origin="test")
        assert wait_for(lambda: app.runner.history[-1][1]["paused"], timeout=10)
    finally:
        app.stop()
    frames = recorder.instances[0].snapshot()
    assert frames and all(image.shape == (SIZE, SIZE, 3) for _, image in frames)
    assert app.board.latest().error == ""


def test_an_engine_that_cannot_run_here_says_why_it_was_replaced(tiny_app_settings, caplog):
    from dreamcam.plugin.pipeline import build_processor

    with caplog.at_level(logging.WARNING, logger="dreamcam.plugin.pipeline"):
        processor = build_processor(replace(tiny_app_settings, engine="tensorrt"), AT_SIZE)
    assert processor.engine_name != "tensorrt"
    assert any("fell back from tensorrt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
