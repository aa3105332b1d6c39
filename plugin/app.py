"""DreamcamApp: the running app (source -> processor -> sink) plus its services (OBS bridge,
control server, ...), owning the one SettingsStore and StatusBoard that control surfaces use."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Protocol

from .control import SettingsStore, StatusBoard
from .frames import Frame
from .processor import Processor
from .runner import Runner, RunnerConfig
from .settings import AppSettings, StreamSettings
from .sinks import Sink, make_sink
from .sources import Source, make_source

log = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> Any: ...


class DreamcamApp:
    """Start with `.start()` (returns at once); stop with `.stop()` (from any thread, e.g. Ctrl+C,
    SIGTERM or the tray's quit). `source`, `sink` and `processor` default to what `app` names;
    without a processor the model is loaded in the background while the input passes through.
    The source and the sink open at the start size (`initial`'s width and height); the sink keeps
    it (`output_size`, default that size) while the diffusion size changes live."""

    def __init__(
        self,
        app: AppSettings,
        initial: StreamSettings | None = None,
        *,
        source: Source | None = None,
        sink: Sink | None = None,
        processor: Processor | None = None,
        load_processor: Callable[[], Processor] | None = None,
        max_frames: int | None = None,
        overwrite: bool = False,
        output_size: tuple[int, int] | None = None,
    ) -> None:
        self.settings = app
        self.store = SettingsStore(initial)
        self.board = StatusBoard()
        start = self.store.current
        self.output_size = output_size or (start.width, start.height)  # (width, height) of every frame written
        width, height = self.output_size
        self.source = source or make_source(app.source, width=start.width, height=start.height, fps=app.fps)
        self.sink = sink or make_sink(app.sink, width=width, height=height, fps=app.fps,
                                      max_frames=max_frames, overwrite=overwrite)
        self._processor = processor
        self._load_processor = load_processor
        if processor is None and load_processor is None:
            self._load_processor = self._default_loader
        self._services: list[Service] = []
        self._started_services: list[Service] = []
        self._runner: Runner | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._devices_open = False

    def _default_loader(self) -> Processor:
        from .pipeline import build_processor

        return build_processor(self.settings)

    # ---- services --------------------------------------------------------------------------
    def add_service(self, service: Service, *, started: bool = False) -> None:
        """Started after the frame loop starts and stopped before it stops (in reverse order).
        `started=True`: the caller started it already (the control port serves during the model
        load); the app only stops it, also when the app itself never starts."""
        with self._lock:
            self._services.append(service)
            if started:
                self._started_services.append(service)
            running = self._runner is not None and not self._stopped.is_set()
        if running and not started:
            self._start_service(service)

    def _start_service(self, service: Service) -> None:
        try:
            service.start()
        except Exception as exc:
            log.exception("service %s failed to start", type(service).__name__)
            raise RuntimeError(f"{type(service).__name__} failed to start: {exc}") from exc
        self._started_services.append(service)

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._runner is not None and not self._stopped.is_set()

    @property
    def runner(self) -> Runner | None:
        return self._runner

    def latest_frames(self) -> tuple[Frame | None, Frame | None]:
        """(newest captured input, newest published output), None before the first: for previews."""
        runner = self._runner
        return (runner.last_captured, runner.last_published) if runner is not None else (None, None)

    def open_devices(self) -> None:
        """Open the source and the sink now, raising SourceError/SinkError with a clear message
        when one is missing (before a long model load, say); `start` does it otherwise."""
        with self._lock:
            self._open_devices()

    def _open_devices(self) -> None:
        if self._devices_open:
            return
        self.source.open()
        try:
            self.sink.open()
        except Exception:
            self.source.close()
            raise
        self._devices_open = True

    def use_processor(self, processor: Processor) -> None:
        """Set the processor built elsewhere (e.g. under a progress bar), before `start`."""
        if self._runner is not None:
            raise RuntimeError("the processor must be set before start()")
        self._processor, self._load_processor = processor, None

    def start(self) -> None:
        """Open the source and the sink (raising SourceError/SinkError with a clear message when
        one is missing), then start the threads and the services. Returns at once."""
        with self._lock:
            if self._runner is not None:
                raise RuntimeError("this app was already started; make a new DreamcamApp")
            self._open_devices()
            engine = self._processor.engine_name if self._processor is not None else self.settings.engine
            config = RunnerConfig(*self.output_size, self.settings.resize, model=self.settings.model, engine=engine)
            self._runner = Runner(self.source, self.sink, self.store, self.board, config,
                                  processor=self._processor, load_processor=self._load_processor)
            self._runner.start()
            services = [s for s in self._services if s not in self._started_services]
        try:
            for service in services:
                self._start_service(service)
        except Exception:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop services, join the threads, release the sink and the source. Safe to call twice;
        True when everything ended within `timeout`."""
        with self._lock:
            if self._runner is None:
                services, self._started_services = self._started_services[::-1], []
                self._services = [s for s in self._services if s not in services]
                if self._devices_open:  # opened, never started
                    self._devices_open = False
                    self._close_devices()
                for service in services:  # handed over running
                    service.stop()
                return True
            if self._stopped.is_set():
                return True
            self._stopped.set()
            services, self._started_services = self._started_services[::-1], []
        for service in services:
            try:
                service.stop()
            except Exception:
                log.exception("service %s failed to stop", type(service).__name__)
        clean = self._runner.stop(timeout)
        if self._runner.processor is not None:
            self._runner.processor.close()  # its GPU graphs go now, not at some later garbage collection
        self._close_devices()
        return clean

    def _close_devices(self) -> None:
        # through the runner's guard: a recording that fails to finish is reported as its failure
        sink = self._runner.sink_guard if self._runner is not None else self.sink
        for part in (sink, self.source):
            try:
                part.close()
            except Exception:
                log.exception("closing %s failed", getattr(part, "name", part))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the app is stopped or its sink is done (e.g. a file sink wrote max frames)."""
        if self._runner is None:
            return True
        finished = self._runner.finished
        if timeout is None:
            while not finished.wait(0.2):
                pass
            return True
        return finished.wait(timeout)

    def __enter__(self) -> "DreamcamApp":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
