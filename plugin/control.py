"""The one settings path: every control surface (OBS bridge, tray, CLI, config file) calls
`SettingsStore.apply`; the runner reads `SettingsStore.current` between two frames and publishes
its numbers on a `StatusBoard` that control surfaces read.

Every applied change is logged here, once for all surfaces, as one INFO line on the
`dreamcam.settings` logger: `settings from obs: strength 0.5 -> 0.2, seed 2 -> 7`."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .settings import SettingsError, StreamSettings, apply_changes

log = logging.getLogger(__name__)
changes_log = logging.getLogger("dreamcam.settings")  # shown without --verbose (see live_status)

SHOWN_TEXT_CHARS = 60  # long prompts are cut in the change log line

Listener = Callable[[StreamSettings, str], None]


class _Listeners:
    """Callbacks of a store or board (thread-safe); a failing one is logged and the others run."""

    def __init__(self, what: str) -> None:
        self._lock = threading.Lock()
        self._items: list[Callable[..., None]] = []
        self._what = what

    def add(self, listener: Callable[..., None]) -> None:
        with self._lock:
            self._items.append(listener)

    def remove(self, listener: Callable[..., None]) -> None:
        with self._lock:
            if listener in self._items:
                self._items.remove(listener)

    def call(self, *args: Any) -> None:
        with self._lock:
            items = list(self._items)
        for listener in items:
            try:
                listener(*args)
            except Exception:  # a broken listener must not break the control path or the frame loop
                log.exception("%s listener failed", self._what)


class SettingsStore:
    """Thread-safe holder of the StreamSettings in force."""

    def __init__(self, initial: StreamSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._current = initial or StreamSettings()
        self._version = 0
        self._origin = "start"
        self._listeners = _Listeners("settings")

    @property
    def current(self) -> StreamSettings:
        return self._current

    @property
    def version(self) -> int:
        """Grows by one with every accepted change; the runner compares it between frames."""
        return self._version

    @property
    def origin(self) -> str:
        """Where the last applied change came from ('start' before any)."""
        return self._origin

    def snapshot(self) -> tuple[StreamSettings, int]:
        with self._lock:
            return self._current, self._version

    def state(self) -> tuple[StreamSettings, int, str]:
        """(settings in force, version, origin of the last change), read together."""
        with self._lock:
            return self._current, self._version, self._origin

    def apply(self, changes: Mapping[str, Any], origin: str = "") -> StreamSettings:
        """Validate and apply a partial update atomically; raise SettingsError and keep the old
        settings when any field is bad. Unknown fields are ignored with one log line."""
        with self._lock:
            new, unknown = apply_changes(self._current, changes)
            if unknown:
                log.info("ignored unknown settings from %s: %s", origin or "?", ", ".join(unknown))
            old = self._current
            changed = new != old
            if changed:
                self._current = new
                self._version += 1
                self._origin = origin or "?"
        if changed:
            changes_log.info("settings from %s: %s", origin or "?", describe_changes(old, new))
            self._listeners.call(new, origin)
        return new

    def subscribe(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners.remove(listener)


def _shown(value: Any) -> str:
    if isinstance(value, str):
        text = value if len(value) <= SHOWN_TEXT_CHARS else value[:SHOWN_TEXT_CHARS - 3] + "..."
        return repr(text)
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def describe_changes(old: StreamSettings, new: StreamSettings) -> str:
    """`field old -> new` for every field that differs, comma-separated."""
    before, after = old.as_dict(), new.as_dict()
    return ", ".join(f"{name} {_shown(before[name])} -> {_shown(after[name])}"
                     for name in after if before.get(name) != after[name])


@dataclass
class Status:
    """What the app reports about once a second (the `status` message of the control protocol)."""

    running: bool = False
    fps_in: float = 0.0
    fps_out: float = 0.0
    infer_fps: float = 0.0
    infer_ms: float = 0.0
    skip_ratio: float = 0.0
    latency_ms: float = 0.0
    dropped: int = 0
    model: str = ""
    engine: str = ""
    error: str = ""
    graph: str = ""  # '' or why the stream runs without a CUDA graph and how much slower (engines.graphed)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        data.update(self.extra)
        return data


StatusListener = Callable[[Status], None]


class StatusBoard:
    """Latest Status, written by the runner, read by control surfaces (thread-safe). Listeners are
    called in the publishing thread (the runner's): they must only hand the status on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = Status()
        self._listeners = _Listeners("status")

    def publish(self, status: Status) -> None:
        with self._lock:
            self._status = status
        self._listeners.call(status)

    def subscribe(self, listener: StatusListener) -> None:
        self._listeners.add(listener)

    def unsubscribe(self, listener: StatusListener) -> None:
        self._listeners.remove(listener)

    def latest(self) -> Status:
        with self._lock:
            return self._status


__all__ = ["SettingsStore", "SettingsError", "Status", "StatusBoard"]
