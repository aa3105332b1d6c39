"""The frame loop: three threads (capture, inference, publish) joined by latest-frame mailboxes.

Capture never waits for inference and the sink never waits for either: a paced sink (virtual
camera) sends the last output again when nothing new is ready. Settings are read from the
SettingsStore between two frames and applied to the processor as one update.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .conditioning import LABELS, conditioning_of
from .conditioning_loader import FAILED, LOADED, LOADING, Outcome
from .control import SettingsStore, Status, StatusBoard
from .frames import Frame, fit
from .mailbox import Mailbox
from .processor import Processor, Ready, Work, core_update
from .settings import STREAM_FIELDS, StreamSettings
from .sinks import Sink
from .sinks.guard import SinkGuard
from .sources import Pacer, Source
from .stats import Average, RateMeter

log = logging.getLogger(__name__)

THREAD_PREFIX = "dreamcam-"
STATUS_PERIOD_S = 1.0
ERROR_HOLD_S = 5.0  # a frame error stays in the status this long after it last happened
LOAD_ERROR_HOLD_S = 30.0  # a failed ControlNet / IP-Adapter / LoRA load stays in the status this long
POLL_IN_FLIGHT_S = 0.002  # with frames in flight: how long to wait for a new frame before publishing the oldest
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 2.0


@dataclass
class RunnerConfig:
    """`width` x `height`: the sink's size, fixed at its open; every frame written is fitted to it
    (`resize` policy) when the processor's output has another size (a live size change)."""

    width: int = 512
    height: int = 512
    resize: str = "crop"
    model: str = ""
    engine: str = ""


@dataclass
class _Job:
    """A frame started on the processor, published when its result is collected."""

    frame: Frame
    t_start: float
    settings: StreamSettings
    version: int
    work: Work
    t0: float | None = None  # perf_counter at submit; None: not inferred (paused)
    skipped: bool = False


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class Runner:
    def __init__(
        self,
        source: Source,
        sink: Sink,
        store: SettingsStore,
        board: StatusBoard,
        config: RunnerConfig,
        *,
        processor: Processor | None = None,
        load_processor: Callable[[], Processor] | None = None,
    ) -> None:
        self.source, self.sink, self.store, self.board, self.config = source, sink, store, board, config
        self.sink_guard = SinkGuard(sink)  # the failure policy: report once, retry, or stop for good
        self.processor = processor
        self._load_processor = load_processor
        self.in_box: Mailbox[Frame] = Mailbox()
        self.out_box: Mailbox[Frame] = Mailbox()
        self._stop = threading.Event()
        self.finished = threading.Event()  # set when the sink says it is done, or on stop
        self._threads: list[threading.Thread] = []
        self._pacers: list[Pacer] = []
        self._lock = threading.Lock()
        self._errors: dict[str, tuple[str, float]] = {}  # topic -> (text, time; inf = until cleared)
        self._fps_in, self._fps_out, self._fps_infer = RateMeter(), RateMeter(), RateMeter()
        self._infer_ms, self._latency_ms, self._skips = Average(), Average(), Average(60)
        self._applied_version = -1
        self.active_settings: StreamSettings | None = None
        self.frames_published = 0
        self.new_frames_published = 0
        self.last_published: Frame | None = None
        self.last_captured: Frame | None = None  # newest input, for previews
        self.history: collections.deque[tuple[int, dict]] = collections.deque(maxlen=512)  # processed frames
        self._last_status = 0.0
        self._last_graph = ""

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("capture", self._capture_loop), ("inference", self._inference_loop),
                             ("publish", self._publish_loop)):
            thread = threading.Thread(target=self._guard(target), name=THREAD_PREFIX + name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop all threads; True when every thread ended within `timeout`."""
        self._stop.set()
        self.source.interrupt()
        for pacer in self._pacers:
            pacer.interrupt()
        self.in_box.close()
        self.out_box.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("threads still running after %.1f s: %s", timeout, ", ".join(alive))
        self.finished.set()
        self._publish_status(running=False)
        return not alive

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except Exception as exc:  # a crashed thread must show up in the status, not vanish
                log.exception("%s crashed", threading.current_thread().name)
                self._set_error(threading.current_thread().name, f"crashed: {exc}")
        return run

    # ---- errors ----------------------------------------------------------------------------
    def _set_error(self, topic: str, text: str, hold: float | None = None) -> None:
        until = time.monotonic() + hold if hold else float("inf")
        with self._lock:
            self._errors[topic] = (text, until)

    def _clear_error(self, topic: str) -> None:
        with self._lock:
            self._errors.pop(topic, None)

    def error_text(self) -> str:
        t = time.monotonic()
        with self._lock:
            return "; ".join(text for text, until in self._errors.values() if until > t)

    # ---- capture ---------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.source.read()
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._recover_source(exc)
                continue
            self._fps_in.tick()
            self.last_captured = frame
            self.in_box.put(frame)

    def _recover_source(self, exc: Exception) -> None:
        name = self.source.name
        log.warning("source %s lost: %s; retrying", name, exc)
        self._set_error("source", f"source {name} lost ({exc}); retrying")
        delay = BACKOFF_START_S
        while not self._stop.is_set():
            try:
                self.source.close()
            except Exception:
                log.debug("closing the lost source failed", exc_info=True)
            if self._stop.wait(delay):
                return
            try:
                self.source.open()
            except Exception as again:
                self._set_error("source", f"source {name} lost ({again}); retrying every {delay:.1f} s")
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            log.info("source %s is back", name)
            self._clear_error("source")
            return

    # ---- inference -------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        """Take the newest frame, start it, publish results in frame order. A processor with
        `submit` and `lanes` > 1 keeps up to that many frames in flight while frames keep coming;
        when none is waiting, the oldest result is published at once (no added delay)."""
        if self.processor is None and self._load_processor is not None:
            self._load_in_background()
        pending: collections.deque[_Job] = collections.deque()
        while not self._stop.is_set():
            while pending and self._ready(pending[0]):
                self._finish(pending.popleft())
            if pending and len(pending) >= self._depth():
                self._finish(pending.popleft())
                continue
            frame = self.in_box.get(timeout=self._wait_s(pending))
            if frame is None:
                if pending:
                    self._finish(pending.popleft())
                continue
            job = self._start(frame)
            if job is not None:
                pending.append(job)

    def _wait_s(self, pending: "collections.deque[_Job]") -> float:
        """How long to wait for a new frame: with frames in flight only briefly (then the oldest is
        published), so a slow source adds no delay."""
        return POLL_IN_FLIGHT_S if pending else 0.1

    def _ready(self, job: "_Job") -> bool:
        """Finished (or failed: `_finish` then reports it), without waiting."""
        try:
            return job.work.done()
        except Exception:  # noqa: BLE001 - the error surfaces from result() in _finish
            return True

    def _depth(self) -> int:
        return self.processor.lanes if self.processor is not None else 1

    def _start(self, frame: Frame) -> "_Job | None":
        t_start = time.monotonic()
        if self.processor is not None:
            self._swap_loaded(self.processor)
        settings, version = self._settings_for_frame()
        policy = self.config.resize
        processor = self.processor
        if settings.paused or processor is None:
            return _Job(frame, t_start, settings, version,
                        Ready(fit(frame.image, self.config.width, self.config.height, policy)))
        # the core fits frames to the diffusion size itself, on the GPU; anything else gets them fitted here
        image = frame.image if processor.fits_frames else fit(frame.image, settings.width, settings.height, policy)
        skipped_before = processor.frames_skipped
        t0 = time.perf_counter()
        try:
            work = processor.submit(image)
        except Exception as exc:
            self._frame_failed(exc)
            return None
        return _Job(frame, t_start, settings, version, work, t0, processor.frames_skipped != skipped_before)

    def _finish(self, job: "_Job") -> None:
        try:
            out = job.work.result()
        except Exception as exc:
            self._frame_failed(exc)
            return
        if job.t0 is not None:
            self._infer_ms.add((time.perf_counter() - job.t0) * 1000)
            self._fps_infer.tick()
            self._skips.add(1.0 if job.skipped else 0.0)  # frames the processor's similarity filter skipped
        frame = job.frame
        meta = dict(frame.meta, settings_version=job.version, t_start=job.t_start, paused=job.settings.paused,
                    t_processed=time.monotonic(), size=(out.shape[1], out.shape[0]))  # as processed
        self.history.append((frame.index, meta))
        out = fit(out, self.config.width, self.config.height, self.config.resize)  # the sink's size (no-op if equal)
        self.out_box.put(Frame(out, frame.t_capture, frame.index, meta))

    def _frame_failed(self, exc: Exception) -> None:
        kind = "GPU out of memory" if _is_out_of_memory(exc) else "frame failed"
        log.warning("%s: %s", kind, exc)
        self._set_error("inference", f"{kind}: {exc}", hold=ERROR_HOLD_S)

    def _load_in_background(self) -> None:
        def load() -> None:
            self._set_error("model", "loading the model")
            try:
                processor = self._load_processor()
            except Exception as exc:
                log.exception("model failed to load")
                self._set_error("model", f"model failed to load: {exc}")
                return
            self.processor = processor
            self._clear_error("model")
        threading.Thread(target=load, name=THREAD_PREFIX + "load", daemon=True).start()

    def _swap_loaded(self, processor: Processor) -> None:
        """Between two frames: what finished loading goes in; each outcome is reported once, and a
        failed load's settings go back to those in force (the field keeps its old value)."""
        for outcome in processor.swap():
            self._report_load(outcome)

    def _report_load(self, outcome: Outcome) -> None:
        topic = "load " + outcome.kind
        if outcome.state == LOADING:
            log.info("loading %s", outcome.what)
            self._set_error(topic, f"loading {outcome.what}")
        elif outcome.state == LOADED:
            log.info("%s: in use", outcome.what)  # (a control source: back)
            self._clear_error(topic)
        elif outcome.state == FAILED:
            loaded = outcome.kind in LABELS  # else the control source: its error lasts until it is back
            text = f"{LABELS[outcome.kind]} not changed: {outcome.error}" if loaded else outcome.error
            log.warning("%s", text)
            self._set_error(topic, text, hold=LOAD_ERROR_HOLD_S if loaded else None)
            if loaded:
                self._restore(outcome)
        else:  # dropped: a newer request of that kind took its place
            self._clear_error(topic)

    def _restore(self, outcome: Outcome) -> None:
        """Put back the source settings of a failed load that nobody changed since."""
        restore = outcome.context
        current = self.store.current
        back = {name: restore.in_force[name] for name, tried in restore.tried.items()
                if getattr(current, name) == tried and tried != restore.in_force[name]}
        if back:
            self.store.apply(back, origin="loader")

    def _settings_for_frame(self) -> tuple[StreamSettings, int]:
        """Apply a newer settings version to the processor as one update; on rejection the
        previous settings stay in force and the error goes to the status."""
        settings, version = self.store.snapshot()
        processor = self.processor
        if processor is None:
            return settings, version
        if version == self._applied_version and self.active_settings is not None:
            return self.active_settings, version
        self._applied_version = version
        try:
            wanted = conditioning_of(settings)  # checks first: nothing is applied when it refuses
            processor.update(**core_update(settings))
            processor.condition(wanted, settings)  # numbers now, new sources load in the background
        except ValueError as exc:
            log.warning("settings rejected by the pipeline: %s", exc)
            self._set_error("settings", f"rejected update: {exc}")
            if self.active_settings is not None:
                self._put_back(settings, str(exc).partition(":")[0])
                return self.active_settings, version
            return settings, version
        self._clear_error("settings")
        self.active_settings = settings
        return settings, version

    def _put_back(self, refused: StreamSettings, name: str) -> None:
        """The field the pipeline refused (a size its engine cannot serve, say) goes back to its value in
        force, unless changed since: panels show what runs, and the next change is not refused for it."""
        in_force = self.active_settings
        if name not in STREAM_FIELDS or getattr(refused, name) == getattr(in_force, name) \
                or getattr(self.store.current, name) != getattr(refused, name):
            return
        self.store.apply({name: getattr(in_force, name)}, origin="pipeline")
        settings, version = self.store.snapshot()
        if settings == in_force:  # nothing new to apply: the rejection stays in the status
            self._applied_version = version

    # ---- publish ---------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        pacer = Pacer(self.sink.fps) if self.sink.fps else None
        if pacer:
            self._pacers.append(pacer)
        last: Frame | None = None
        while not self._stop.is_set():
            if pacer:
                pacer.wait()
                if self._stop.is_set():
                    break
                new = self.out_box.take_new()
            else:
                new = self.out_box.get(timeout=0.1)
            if new is not None:
                last = new
                self._write(new, fresh=True)
            elif pacer and self.sink.repeat_last and last is not None:
                self._write(last, fresh=False)
            if self.sink.done:
                self.finished.set()
            self._maybe_publish_status()

    def _write(self, frame: Frame, fresh: bool) -> None:
        if self._stop.is_set():
            return
        written = self.sink_guard.write(frame.image)
        if self.sink_guard.error:
            self._set_error("sink", self.sink_guard.error)
            if self.sink_guard.failed:
                self.finished.set()  # nothing more can be written: the run ends (and exits non-zero)
        elif written and "sink" in self._errors:
            self._clear_error("sink")
        if not written:
            return
        self._fps_out.tick()
        self.frames_published += 1
        if fresh:
            self.new_frames_published += 1
            self.last_published = frame
            self._latency_ms.add((time.monotonic() - frame.t_capture) * 1000)

    # ---- status ----------------------------------------------------------------------------
    def _maybe_publish_status(self) -> None:
        t = time.monotonic()
        if t - self._last_status >= STATUS_PERIOD_S:
            self._last_status = t
            status = self._publish_status(running=True)
            if status.graph != self._last_graph:  # said once when it appears (and when it clears)
                self._last_graph = status.graph
                log.warning("%s", status.graph or "the stream runs as CUDA graphs again")
            log.info(
                "in %.1f fps | infer %.1f fps %.1f ms | out %.1f fps | latency %.1f ms | dropped %d%s%s",
                status.fps_in, status.infer_fps, status.infer_ms, status.fps_out, status.latency_ms,
                status.dropped, f" | {status.error}" if status.error else "", f" | {status.graph}" if status.graph else "",
            )

    def status(self, running: bool = True) -> Status:
        processor = self.processor
        return Status(
            running=running,
            fps_in=round(self._fps_in.rate(), 2),
            fps_out=round(self._fps_out.rate(), 2),
            infer_fps=round(self._fps_infer.rate(), 2),
            infer_ms=round(self._infer_ms.mean(), 2),
            skip_ratio=round(self._skips.mean(), 3),
            latency_ms=round(self._latency_ms.mean(), 1),
            dropped=self.in_box.dropped + self.out_box.dropped,
            model=self.config.model,
            engine=processor.engine_name if processor is not None else self.config.engine,
            error=self.error_text(),
            graph=processor.graph_warning if processor is not None else "",
            extra={"frames_out": self.frames_published, "source": self.source.name},
        )

    def _publish_status(self, running: bool) -> Status:
        status = self.status(running)
        self.board.publish(status)
        return status
