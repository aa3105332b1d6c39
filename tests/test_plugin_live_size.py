"""The diffusion size as a live setting, through the real runner and the real core (tiny model, CPU):
the sink keeps the size it opened with and every frame is fitted to it, frames keep flowing across
a change, bad sizes are refused by the settings, and an engine that cannot serve a size refuses it
with the old size kept (in the stream and in the store)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from app_parts import RecordingSink, StillCamera
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.frames import Frame
from dreamcam.plugin.pipeline import build_processor
from dreamcam.plugin.settings import AppSettings, SettingsError, StreamSettings
from dreamcam.plugin.sources import SourceError
from plugin_helpers import dreamcam_threads, wait_for

SIZE = 64
START = StreamSettings(prompt="a red fox", similarity_filter=False, width=SIZE, height=SIZE)


@pytest.fixture(scope="module")
def app_settings(tiny_model_dir):
    return AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cpu",
                       dtype="float32", engine="eager", control_port=0, web_port=0)


class LockStepCamera(StillCamera):
    """A camera whose next frame waits until the sink has the previous one: nothing is ever dropped,
    so every frame that goes in must come out."""

    def __init__(self, sink: RecordingSink, width: int, height: int) -> None:
        super().__init__(width, height, fps=1000)
        self.sink, self.sent, self._stop = sink, 0, threading.Event()

    def read(self) -> Frame:
        while self.sink.count() < self.sent:
            if self._stop.wait(0.002):
                raise SourceError("stopped")
        self.sent += 1
        return Frame(self.image.copy(), time.monotonic(), self.sent)

    def interrupt(self) -> None:
        self._stop.set()


def processed(app: DreamcamApp, since_version: int) -> list[dict]:
    return [meta for _, meta in list(app.runner.history) if meta["settings_version"] >= since_version]


def test_a_live_size_change_keeps_frames_flowing_at_the_sinks_size(app_settings):
    processor = build_processor(app_settings, START, local_files_only=True)
    sink = RecordingSink()
    camera = LockStepCamera(sink, 80, 48)  # any camera size: the core fits it to the diffusion size
    app = DreamcamApp(app_settings, START, source=camera, sink=sink, processor=processor)
    assert app.output_size == (SIZE, SIZE)
    app.start()
    try:
        assert wait_for(lambda: sink.count() >= 3, timeout=60)
        app.store.apply({"width": 96, "height": 48}, origin="test")
        version = app.store.version
        assert wait_for(lambda: len(processed(app, version)) >= 4, timeout=60), app.runner.error_text()
        for bad, words in (({"width": 100}, "width: must be a multiple of 8, got 100"),
                           ({"height": 4096}, "height: must be from 32 to 2048, got 4096"),
                           ({"width": 24, "prompt": "never"}, "width: must be from 32 to 2048, got 24")):
            with pytest.raises(SettingsError, match=words):
                app.store.apply(bad, origin="test")
        assert app.store.version == version and app.store.current.prompt == "a red fox"
        seen = sink.count()
        assert wait_for(lambda: sink.count() >= seen + 2, timeout=60)
        status = app.runner.status()
    finally:
        assert app.stop()
    assert dreamcam_threads() == []
    history = list(app.runner.history)
    assert [index for index, _ in history] == list(range(1, len(history) + 1))  # every frame in came out ...
    assert sink.count() >= len(history) - 1 and camera.sent - len(history) <= 1  # ... (one may be in flight at stop)
    assert all(image.shape == (SIZE, SIZE, 3) for _, image in sink.frames)  # at the size the sink opened with
    sizes = {meta["settings_version"]: meta["size"] for _, meta in history}
    assert sizes[0] == (SIZE, SIZE) and sizes[version] == (96, 48)  # diffused at the new size from that version on
    assert (processor.config.width, processor.config.height) == (96, 48)
    assert status.error == "" and status.dropped == 0


def test_a_size_the_engine_cannot_serve_is_refused_and_the_old_size_kept(app_settings, tiny_model_dir):
    """The TensorRT engine's refusal (its profile's `fits`, on eager modules: no GPU needed): the
    stream keeps its size, the status says why, the store's size goes back to the one in force (panels
    show what runs), later changes go through, and a size inside the profile is taken live."""
    from dreamcam.core.loading import ModelSpec, load_components
    from dreamcam.core.modules import eager_modules
    from dreamcam.core.stream import StreamDiffusion
    from dreamcam.engines.config import EngineConfig, Geometry
    from dreamcam.engines.driver import StreamDriver
    from dreamcam.engines.tensorrt import profile_fits
    from dreamcam.plugin.pipeline import stream_config
    from dreamcam.plugin.processor import CoreProcessor

    components = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))
    fits = profile_fits(EngineConfig(geometry=Geometry(SIZE, SIZE), trt_min_side=64, trt_max_side=128))
    modules = dataclasses.replace(eager_modules(components), fits=fits)
    stream = StreamDiffusion(components, stream_config(app_settings, START), modules=modules)
    processor = CoreProcessor(StreamDriver(stream), "tensorrt")
    sink = RecordingSink()
    app = DreamcamApp(app_settings, START, source=StillCamera(SIZE, SIZE, fps=30), sink=sink, processor=processor)
    app.start()
    try:
        assert wait_for(lambda: sink.count() >= 2, timeout=60)
        app.store.apply({"width": 192}, origin="test")
        refused = app.store.version
        assert wait_for(lambda: "rejected update: width: the TensorRT engine takes sizes with sides from 64 to 128"
                        in app.runner.error_text(), timeout=30)
        assert wait_for(lambda: app.store.current.width == SIZE, timeout=10)  # put back: what runs
        assert app.store.origin == "pipeline"
        seen = sink.count()
        assert wait_for(lambda: sink.count() >= seen + 2, timeout=60)
        assert "rejected update: width" in app.runner.error_text()  # until a change goes through
        assert all(meta["size"] == (SIZE, SIZE) for meta in processed(app, refused))
        app.store.apply({"width": 96, "prompt": "a blue whale"}, origin="test")
        taken = app.store.version
        assert wait_for(lambda: len(processed(app, taken)) >= 2, timeout=60)
        assert wait_for(lambda: app.runner.error_text() == "", timeout=10)
    finally:
        assert app.stop()
    assert all(meta["size"] == (96, SIZE) for meta in processed(app, taken))
    assert processor.config.prompt == "a blue whale"
    assert all(image.shape == (SIZE, SIZE, 3) for _, image in sink.frames)


def test_paused_and_stand_in_frames_are_fitted_to_the_sink_and_the_stream_size_in_between():
    """Without the core: a processor that does not fit frames gets them at the diffusion size in force,
    and paused frames go straight to the sink's size."""
    from dreamcam.plugin.processor import PassThrough

    sink = RecordingSink()
    app = DreamcamApp(AppSettings(control_port=0, web_port=0), dataclasses.replace(START, width=48),
                      source=StillCamera(80, 80, fps=30), sink=sink, processor=PassThrough())
    assert app.output_size == (48, SIZE)
    app.start()
    try:
        assert wait_for(lambda: sink.count() >= 2)
        app.store.apply({"width": 96}, origin="test")
        wide = app.store.version
        assert wait_for(lambda: len(processed(app, wide)) >= 2)
        app.store.apply({"paused": True}, origin="test")
        paused = app.store.version
        assert wait_for(lambda: len(processed(app, paused)) >= 2)
    finally:
        assert app.stop()
    assert all(m["size"] == (96, SIZE) for m in processed(app, wide) if m["settings_version"] == wide)
    assert all(m["size"] == (48, SIZE) and m["paused"] for m in processed(app, paused))
    assert all(image.shape == (SIZE, 48, 3) for _, image in sink.frames)
    assert np.array_equal(sink.frames[-1][1], sink.frames[-2][1])  # a still scene, passed through
