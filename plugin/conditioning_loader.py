"""Loading in the background, swapping in between two frames.

`BackgroundLoader` runs load functions in ONE worker thread (loads read files and may move
weights to the GPU: one at a time) while the frame loop goes on. Each load belongs to a kind
("loras", "controlnets", ...) and is identified by a key: asking for the key in force, or the one
being loaded, does nothing; a newer request of a kind replaces an older one still waiting, and a
result that a newer request superseded is dropped. The frame loop calls `swap()` between two
frames: it runs the finished loads' `install` there (the only place the stream changes) and
returns what happened (`Outcome`: loading, loaded or failed), so the app can report it. A failed
load or install leaves the kind's key in force unchanged and is not retried until another key of
that kind is asked for.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

log = logging.getLogger(__name__)

LOADING, LOADED, FAILED, DROPPED = "loading", "loaded", "failed", "dropped"  # dropped: superseded


@dataclass(frozen=True)
class Request:
    """`load()` runs in the worker thread and returns a value; `install(value)` runs in `swap()`.
    `what` names it in messages; `context` comes back in the outcome (e.g. the settings to restore)."""

    key: Hashable
    load: Callable[[], Any]
    install: Callable[[Any], None]
    what: str = ""
    context: Any = None


@dataclass(frozen=True)
class Outcome:
    kind: str
    state: str  # LOADING | LOADED | FAILED | DROPPED
    what: str
    error: str = ""
    context: Any = None


@dataclass
class _Done:
    kind: str
    request: Request
    value: Any = None
    error: Optional[BaseException] = None


@dataclass
class _State:
    current: dict[str, Hashable] = field(default_factory=dict)  # key in force per kind
    wanted: dict[str, Request] = field(default_factory=dict)
    failed: dict[str, Hashable] = field(default_factory=dict)  # last key that failed, per kind
    running: Optional[tuple[str, Request]] = None
    events: list[Any] = field(default_factory=list)  # loads started (Outcome) and finished (_Done), in order


def error_line(exc: BaseException) -> str:
    """One line: the message of our own errors (they name the thing and the fix), else its type too."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, ValueError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BackgroundLoader:
    def __init__(self, initial: Optional[dict[str, Hashable]] = None, name: str = "dreamcam-load") -> None:
        self._cv = threading.Condition()
        self._s = _State(current=dict(initial or {}))
        self._name = name
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def current(self, kind: str, default: Hashable = ()) -> Hashable:
        with self._cv:
            return self._s.current.get(kind, default)

    def want(self, kind: str, request: Request) -> None:
        """Ask for `request.key` of `kind` (never waits)."""
        with self._cv:
            s = self._s
            previous = s.wanted.get(kind)
            if previous is not None and previous.key == request.key:
                return
            s.wanted[kind] = request
            s.failed.pop(kind, None)  # another key: a failed one may be tried again later
            self._start_thread()
            self._cv.notify_all()

    def busy(self) -> bool:
        """A load runs or waits to run or to be swapped in."""
        with self._cv:
            return self._s.running is not None or bool(self._s.events) or self._next() is not None

    def swap(self) -> list[Outcome]:
        """Between two frames: install finished loads (in this thread); what started, loaded or failed."""
        with self._cv:
            events, self._s.events = self._s.events, []
        outcomes = []
        for item in events:
            if isinstance(item, Outcome):
                outcomes.append(item)
                continue
            request = item.request
            with self._cv:
                wanted = self._s.wanted.get(item.kind)
            if wanted is None or wanted.key != request.key:  # superseded by a newer request
                outcomes.append(Outcome(item.kind, DROPPED, request.what, context=request.context))
                continue
            error = item.error
            if error is None:
                try:
                    item.request.install(item.value)
                except Exception as exc:  # noqa: BLE001 - reported, the previous state stays
                    log.debug("install of %s failed", item.request.what, exc_info=True)
                    error = exc
            with self._cv:
                if error is None:
                    self._s.current[item.kind] = item.request.key
                else:
                    self._s.failed[item.kind] = item.request.key
                self._cv.notify_all()
            state, text = (LOADED, "") if error is None else (FAILED, error_line(error))
            outcomes.append(Outcome(item.kind, state, item.request.what, text, item.request.context))
        return outcomes

    def run_now(self, kind: str, request: Request) -> None:
        """Load and install in this thread (before the stream starts); raises what they raise."""
        request.install(request.load())
        with self._cv:
            self._s.current[kind] = request.key
            self._s.wanted[kind] = request

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ---- the worker ------------------------------------------------------------------------
    def _start_thread(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()

    def _next(self) -> Optional[tuple[str, Request]]:
        """(under the lock) A request to load now: not in force, not failed, not loading, not done."""
        s = self._s
        if s.running is not None:
            return None
        waiting = {e.kind for e in s.events  # a result that is still wanted waits for swap() first
                   if isinstance(e, _Done) and e.kind in s.wanted and s.wanted[e.kind].key == e.request.key}
        for kind, request in s.wanted.items():
            if kind in waiting or request.key == s.current.get(kind, ()) or request.key == s.failed.get(kind):
                continue
            return kind, request
        return None

    def _work(self) -> None:
        while True:
            with self._cv:
                job = self._next()
                while job is None and not self._closed:
                    self._cv.wait()
                    job = self._next()
                if self._closed:
                    return
                self._s.running = job
                kind, request = job
                self._s.events.append(Outcome(kind, LOADING, request.what, context=request.context))
            value, error = None, None
            try:
                value = request.load()
            except BaseException as exc:  # noqa: BLE001 - any failure is the load's outcome
                log.debug("loading %s failed", request.what, exc_info=True)
                error = exc
            with self._cv:
                self._s.running = None
                self._s.events.append(_Done(kind, request, value, error))
                self._cv.notify_all()
