"""The frame loop with real threads: test pattern -> processor -> the real pyvirtualcam.Camera
with a recording backend."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.sinks.vcam import VirtualCameraSink
from dreamcam.plugin.sources.pattern import PatternSource, read_index
from plugin_helpers import no_recorder_left_behind  # noqa: F401 (autouse fixture)
from plugin_helpers import BACKEND, UnpluggableSource, dreamcam_threads, register_recorder, wait_for

SIZE = 64


def make_app(source_fps=30.0, sink_fps=20.0, delay=0.0, source=None, processor=None, initial=None):
    recorder = register_recorder()
    settings = AppSettings(fps=sink_fps, control_port=0)
    app = DreamcamApp(
        settings, dataclasses.replace(initial or StreamSettings(), width=SIZE, height=SIZE),
        source=source or PatternSource(SIZE, SIZE, source_fps),
        sink=VirtualCameraSink(SIZE, SIZE, sink_fps, backend=BACKEND),
        processor=processor or PassThrough(delay),
    )
    return app, recorder


def published_indices(recorder) -> list[int]:
    return [read_index(image) for _, image in recorder.instances[0].snapshot()]


def test_frames_arrive_in_capture_order_and_never_go_back():
    app, recorder = make_app(source_fps=60, sink_fps=25, delay=0.03)
    app.start()
    try:
        assert wait_for(lambda: len(recorder.instances[0].frames) >= 40)
    finally:
        assert app.stop()
    indices = published_indices(recorder)
    assert all(b >= a for a, b in zip(indices, indices[1:])), indices
    distinct = sorted(set(indices))
    assert len(distinct) > 10
    # inference at ~30 fps behind a 60 fps source: newest wins, the rest are dropped and counted
    assert any(b - a > 1 for a, b in zip(distinct, distinct[1:]))
    assert app.board.latest().dropped > 0


@pytest.mark.parametrize("delay,source_fps", [(0.1, 30.0), (0.0, 60.0)])
def test_output_fps_follows_the_sink_not_the_inference(delay, source_fps):
    sink_fps = 20.0
    app, recorder = make_app(source_fps=source_fps, sink_fps=sink_fps, delay=delay)
    app.start()
    try:
        assert wait_for(lambda: len(recorder.instances[0].frames) >= 5)
        start = len(recorder.instances[0].frames)
        time.sleep(2.0)
        sent = len(recorder.instances[0].frames) - start
        status = app.board.latest()
    finally:
        app.stop()
    assert sink_fps * 2 * 0.8 <= sent <= sink_fps * 2 * 1.15, sent
    assert abs(status.fps_out - sink_fps) < 3, status
    if delay:  # slow inference: the camera repeats frames rather than slowing down
        assert status.infer_fps < 12
        indices = published_indices(recorder)
        assert len(indices) > 2 * len(set(indices)) * 0.9
    else:  # fast inference: frames are dropped rather than queued
        assert status.fps_in > sink_fps * 2


def test_stop_joins_threads_releases_the_camera_and_writes_nothing_after():
    app, recorder = make_app()
    app.start()
    assert wait_for(lambda: len(recorder.instances[0].frames) >= 3)
    assert dreamcam_threads()
    assert app.stop(timeout=5.0)
    backend = recorder.instances[0]
    count = len(backend.frames)
    time.sleep(0.3)
    assert len(backend.frames) == count
    assert backend.closed == 1 and backend.sent_after_close == 0
    assert dreamcam_threads() == []
    assert not app.is_running
    assert app.board.latest().running is False
    assert app.stop()  # twice is fine


def test_stop_wakes_a_source_waiting_for_its_next_frame():
    app, recorder = make_app(source_fps=0.2)  # a frame every 5 s: the capture thread sleeps in read()
    app.start()
    assert wait_for(lambda: len(recorder.instances[0].frames) >= 1)
    t0 = time.monotonic()
    assert app.stop(timeout=4.0)  # the runner interrupts the source's wait instead of sitting it out
    assert time.monotonic() - t0 < 2.0
    assert dreamcam_threads() == []


def test_source_loss_keeps_publishing_reports_and_recovers():
    source = UnpluggableSource(SIZE, SIZE, 30)
    app, recorder = make_app(source=source)
    backend = None
    app.start()
    try:
        backend = recorder.instances[0]
        assert wait_for(lambda: len(backend.frames) >= 5)
        source.plugged.clear()
        assert wait_for(lambda: "lost" in app.board.latest().error, timeout=5)
        assert "test camera" in app.board.latest().error
        count = len(backend.frames)
        time.sleep(0.6)
        outage = backend.snapshot()[count:]
        assert len(outage) >= 8  # the virtual camera keeps its frame rate ...
        last = outage[-1][1]
        assert all(np.array_equal(image, last) for _, image in outage[2:])  # ... with the last output
        stale_index = read_index(last)
        source.plugged.set()
        assert wait_for(lambda: app.board.latest().error == "", timeout=8)
        assert source.opens >= 2
        assert wait_for(lambda: read_index(backend.snapshot()[-1][1]) != stale_index, timeout=5)
    finally:
        app.stop()


class RejectingProcessor(PassThrough):
    """Stand-in with the core's update contract: raises ValueError and changes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.prompt = None

    def update(self, **changes):
        if changes.get("prompt") == "forbidden":
            raise ValueError("prompt: not allowed by this pipeline")
        super().update(**changes)
        self.prompt = changes.get("prompt", self.prompt)


def test_rejected_update_reports_and_keeps_previous_settings():
    processor = RejectingProcessor()
    app, recorder = make_app(processor=processor, initial=StreamSettings(prompt="first"))
    app.start()
    try:
        assert wait_for(lambda: processor.prompt == "first")
        app.store.apply({"prompt": "forbidden"}, origin="test")
        assert wait_for(lambda: "prompt: not allowed" in app.board.latest().error, timeout=5)
        assert processor.prompt == "first"
        assert app.runner.active_settings.prompt == "first"
        app.store.apply({"prompt": "second"}, origin="test")
        assert wait_for(lambda: processor.prompt == "second")
        assert wait_for(lambda: app.board.latest().error == "", timeout=5)
    finally:
        app.stop()


class OutOfMemoryOnce(PassThrough):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self, image):
        self.calls += 1
        if self.calls == 5:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return image


def test_out_of_memory_in_one_frame_is_reported_and_the_stream_goes_on():
    processor = OutOfMemoryOnce()
    app, recorder = make_app(processor=processor)
    app.start()
    try:
        assert wait_for(lambda: processor.calls >= 5)
        assert wait_for(lambda: "out of memory" in app.board.latest().error.lower(), timeout=3)
        assert wait_for(lambda: processor.calls >= 15)
        assert app.is_running
    finally:
        app.stop()
    assert read_index(recorder.instances[0].snapshot()[-1][1]) > 10


def test_services_start_and_stop_with_the_app():
    events = []

    class Service:
        def __init__(self, name):
            self.name = name

        def start(self):
            events.append(("start", self.name))

        def stop(self):
            events.append(("stop", self.name))

    app, _ = make_app()
    app.add_service(Service("a"))
    app.add_service(Service("b"))
    app.start()
    app.stop()
    assert events == [("start", "a"), ("start", "b"), ("stop", "b"), ("stop", "a")]


class Inverter(PassThrough):
    def __call__(self, image):
        return 255 - image


def test_model_loads_in_the_background_while_the_input_passes_through():
    import threading

    release = threading.Event()

    def load():
        release.wait(10)
        return Inverter()

    recorder = register_recorder()
    pattern = PatternSource(SIZE, SIZE, 30)
    app = DreamcamApp(AppSettings(fps=20, control_port=0), StreamSettings(width=SIZE, height=SIZE), source=pattern,
                      sink=VirtualCameraSink(SIZE, SIZE, 20, backend=BACKEND), load_processor=load)
    app.start()
    try:
        backend = recorder.instances[0]
        assert wait_for(lambda: len(backend.frames) >= 3)
        last = backend.snapshot()[-1][1]
        assert np.array_equal(last, pattern.render(read_index(last)))  # input passes through
        assert wait_for(lambda: "loading the model" in app.runner.status().error, timeout=3)
        release.set()
        assert wait_for(lambda: app.runner.status().error == "", timeout=5)
        assert wait_for(lambda: np.array_equal(255 - backend.snapshot()[-1][1],
                                               pattern.render(read_index(255 - backend.snapshot()[-1][1]))))
    finally:
        app.stop()


class OverlappingProcessor(PassThrough):
    """Stands in for the GPU's frames in flight (`engines.driver.StreamDriver` lanes): `submit`
    starts a frame on a worker thread, `result()` collects it; counts frames uncollected."""

    def __init__(self, lanes: int, delay: float) -> None:
        super().__init__(delay)
        from concurrent.futures import ThreadPoolExecutor

        self.lanes = lanes
        self.pool = ThreadPoolExecutor(lanes)
        self.outstanding = self.max_outstanding = 0

    def submit(self, image):
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        future = self.pool.submit(super().__call__, image)
        processor = self

        class Pending:
            def done(self):
                return future.done()

            def result(self):
                out = future.result()
                processor.outstanding -= 1
                return out

        return Pending()


def _history_with(processor: OverlappingProcessor, source_fps: float, frames: int) -> list[tuple[int, dict]]:
    app, _ = make_app(source_fps=source_fps, sink_fps=20, processor=processor)
    app.start()
    try:
        assert wait_for(lambda: len(app.runner.history) >= frames, timeout=20)
    finally:
        app.stop()
        processor.pool.shutdown()
    return list(app.runner.history)


def test_frames_in_flight_overlap_and_are_published_in_frame_order():
    processor = OverlappingProcessor(lanes=3, delay=0.05)
    indices = [index for index, _ in _history_with(processor, source_fps=120, frames=30)]
    assert all(b > a for a, b in zip(indices, indices[1:])), indices
    assert processor.max_outstanding == 3  # never more than the processor's lanes, and it used them


def test_frames_in_flight_add_no_delay_when_the_source_is_slower_than_the_gpu():
    processor = OverlappingProcessor(lanes=3, delay=0.01)
    history = _history_with(processor, source_fps=8, frames=6)
    held = [meta["t_processed"] - meta["t_start"] for _, meta in history]
    assert max(held) < 0.1, held  # published before the next frame (125 ms later) arrives
    assert processor.max_outstanding == 1


def test_a_frame_whose_completion_check_fails_is_reported_and_the_stream_goes_on():
    processor = OverlappingProcessor(lanes=2, delay=0.01)
    real_submit = processor.submit
    calls = {"n": 0}

    def submit(image):
        pending = real_submit(image)
        calls["n"] += 1
        if calls["n"] == 3:
            def broken():
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            pending.done = pending.result = broken
        return pending

    processor.submit = submit
    app, _ = make_app(source_fps=60, sink_fps=20, processor=processor)
    app.start()
    try:
        assert wait_for(lambda: "illegal memory access" in app.board.latest().error, timeout=10)
        assert wait_for(lambda: len(app.runner.history) >= 10, timeout=20)
        assert app.is_running
    finally:
        app.stop()
        processor.pool.shutdown()
