"""The app's side of OBS control: a service that listens for `dreamcam` custom events on OBS's
WebSocket server (obs-websocket v5, via obsws-python) and applies each `settings` message as one
SettingsStore update, broadcasts the app's `state` (the settings in force) on connect and after
every applied change from any surface, and its `status` about once a second.

Reconnects with back-off when OBS is closed or started later. A missing server or a wrong
password is reported once (log line and `.state`), not once per retry. The password is never
logged: obsws-python logs connection parameters (password included) at INFO, so its loggers are
held at CRITICAL while the bridge runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable

from . import messages
from .control import SettingsStore, StatusBoard

log = logging.getLogger(__name__)

ENV_HOST = "DREAMCAM_OBS_HOST"
ENV_PORT = "DREAMCAM_OBS_PORT"
ENV_PASSWORD = "DREAMCAM_OBS_PASSWORD"
ORIGIN = "obs"


def quiet_obsws_logging() -> None:
    """obsws-python logs the password (INFO) and a traceback per refused connection (ERROR)."""
    for name in ("obsws_python", "websocket"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4455


def connection_from_env(host: str | None = None, port: int | None = None,
                        password: str | None = None) -> tuple[str, int, str]:
    """Values other than the defaults win, then DREAMCAM_OBS_HOST/PORT/PASSWORD, then
    127.0.0.1:4455 and no password. (AppSettings always holds a host and port, so the
    environment overrides the default ones.)"""
    if not host or host == DEFAULT_HOST:
        host = os.environ.get(ENV_HOST) or DEFAULT_HOST
    if not port or int(port) == DEFAULT_PORT:
        port = int(os.environ.get(ENV_PORT) or DEFAULT_PORT)
    if password is None or password == "":
        password = os.environ.get(ENV_PASSWORD, password or "")
    return host, port, password


def describe_connect_error(exc: BaseException, host: str, port: int) -> tuple[str, str]:
    """(kind, message) for a failed connection: kind is 'auth', 'refused' or 'other'."""
    text = f"{type(exc).__name__}: {exc}"
    if "identify" in text or "password" in text.lower():
        return "auth", (f"OBS WebSocket at {host}:{port} rejected the password. Set the password shown "
                        f"in OBS (Tools > WebSocket Server Settings > Show Connect Info) with "
                        f"--obs-password or the {ENV_PASSWORD} environment variable.")
    if isinstance(exc, OSError) or "refused" in text.lower():
        return "refused", (f"No OBS WebSocket server at {host}:{port}. Start OBS and enable Tools > "
                           f"WebSocket Server Settings > Enable WebSocket server (port {port}); "
                           f"Dreamcam keeps trying and connects when it is up.")
    return "other", f"Cannot connect to OBS WebSocket at {host}:{port}: {text}"


class ObsBridge:
    """Service (start()/stop()) joining OBS to the app's SettingsStore and StatusBoard."""

    def __init__(self, store: SettingsStore, board: StatusBoard, host: str | None = None,
                 port: int | None = None, password: str | None = None, *,
                 status_interval: float = 1.0, max_backoff: float = 5.0, add_camera: str | None = None,
                 client_module: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.board = board
        self.host, self.port, self._password = connection_from_env(host, port, password)
        self.status_interval = status_interval
        self.add_camera = add_camera  # device name: put that capture device into the current scene
        self.camera_result = ""
        self.max_backoff = max_backoff
        self._ws = client_module
        self._clock = clock
        self._stop = threading.Event()
        self._kick = threading.Event()  # publish now (after a rejection, a change, a request)
        self._state_due = threading.Event()  # broadcast the state at the next chance
        self._presets_sent: list[str] | None = None
        self._subscribed = False
        self._thread: threading.Thread | None = None
        self._state = "stopped"
        self._reported = ""  # the last problem logged, so each one is logged once
        self._last_error = ""
        self._lock = threading.Lock()
        self.connections = 0  # successful connects so far (reconnects included)
        self.applied = 0  # settings messages applied
        self.rejected = 0

    def __repr__(self) -> str:  # never shows the password
        return f"ObsBridge(host={self.host!r}, port={self.port}, state={self._state!r})"

    # ---- service ---------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """'connected to OBS at host:port', 'connecting ...', the last connection problem, or 'stopped'."""
        return self._state

    @property
    def last_error(self) -> str:
        with self._lock:
            return self._last_error

    def start(self) -> None:
        if self._ws is None:
            try:
                import obsws_python
            except ImportError as exc:
                raise RuntimeError("OBS control needs obsws-python: pip install \"dreamcam[obs]\"") from exc
            self._ws = obsws_python
        quiet_obsws_logging()
        if not self._subscribed:
            self.store.subscribe(self._on_store_change)
            self._subscribed = True
        self._stop.clear()
        self._state = f"connecting to OBS at {self.host}:{self.port}"
        self._thread = threading.Thread(target=self._run, name="dreamcam-obs-bridge", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._state = "stopped"

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._state.startswith("connected"):
                return True
            time.sleep(0.05)
        return False

    # ---- connection loop -------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            try:
                clients = self._connect()
            except Exception as exc:  # unexpected: report once, keep the service alive
                self._report("other", f"Cannot connect to OBS WebSocket at {self.host}:{self.port}: {exc}")
                clients = None
            if clients is None:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 0.25
            try:
                self._serve(*clients)
            finally:
                self._close(*clients)
            if not self._stop.is_set():
                self._report("lost", f"Lost the connection to OBS at {self.host}:{self.port}; reconnecting.")

    def _report(self, kind: str, message: str) -> None:
        self._state = message
        if kind != self._reported:
            self._reported = kind
            (log.info if kind in ("connected", "lost") else log.warning)("%s", message)

    def _on_store_change(self, _settings: Any, _origin: str) -> None:  # any thread, any surface
        self._state_due.set()
        self._kick.set()

    def _connect(self) -> tuple[Any, Any] | None:
        req = ev = None
        try:
            req = self._ws.ReqClient(host=self.host, port=self.port, password=self._password, timeout=3)
            ev = self._ws.EventClient(host=self.host, port=self.port, password=self._password,
                                      subs=self._ws.Subs.GENERAL)
        except Exception as exc:
            self._close(req, ev)
            kind, message = describe_connect_error(exc, self.host, self.port)
            self._report(kind, message)
            return None

        def on_custom_event(data: Any) -> None:  # obsws-python dispatches on this exact name
            try:
                self._on_event({k: getattr(data, k) for k in data.attrs()})
            except Exception:  # an exception here would end obsws-python's event thread
                log.exception("handling an OBS custom event failed")

        ev.callback.register(on_custom_event)
        self.connections += 1
        again = "connected to OBS again" if self.connections > 1 else "connected to OBS"
        self._report("connected", f"{again} at {self.host}:{self.port}; the OBS panel now shows and "
                                  "changes the settings in force")
        try:
            req.broadcast_custom_event({"eventData": messages.encode("hello", role="app")})
        except Exception:
            pass
        self._state_due.set()  # panels show the app's settings, never the other way round
        if self.add_camera and not self.camera_result:
            self._add_camera(req)
        return req, ev

    def _add_camera(self, req: Any) -> None:
        from .obs_scene import add_capture_source

        try:
            device = add_capture_source(req, self.add_camera)
            self.camera_result = f"OBS source 'Dreamcam' shows {device}"
            log.info("%s", self.camera_result)
        except Exception as exc:  # a convenience: never stops the bridge
            self.camera_result = f"could not add the camera source to OBS: {exc}"
            log.warning("%s", self.camera_result)

    def _serve(self, req: Any, ev: Any) -> None:
        next_status = 0.0
        while not self._stop.is_set():
            if not ev.worker.is_alive():
                return
            now = self._clock()
            if now >= next_status or self._kick.is_set():
                self._kick.clear()
                try:
                    if self._state_due.is_set() or self._presets_changed():
                        self._state_due.clear()
                        req.broadcast_custom_event({"eventData": self.state_event()})
                    req.broadcast_custom_event({"eventData": self.status_event()})
                except Exception:
                    self._state_due.set()
                    return
                next_status = now + self.status_interval
            self._kick.wait(min(0.1, max(0.0, next_status - now)))
        try:  # tell the panel we are going away
            req.broadcast_custom_event({"eventData": messages.encode("bye", role="app")})
        except Exception:
            pass

    @staticmethod
    def _close(req: Any, ev: Any) -> None:
        for client in (ev, req):
            if client is not None:
                try:
                    client.disconnect()
                except Exception:
                    pass

    # ---- messages --------------------------------------------------------------------------
    def _presets_changed(self) -> bool:
        """Presets saved or deleted elsewhere (`dreamcam preset save`) reach the panels too."""
        return messages.preset_names() != self._presets_sent

    def state_event(self) -> dict[str, Any]:
        data = messages.state_event(self.store)
        self._presets_sent = data[messages.NAMESPACE]["presets"]
        return data

    def _on_event(self, event_data: Any) -> None:
        version = self.store.version
        handled = messages.handle(self.store, event_data, ORIGIN)
        error = handled.error
        if handled.wants_state or error:
            self._state_due.set()  # the sender learns what is in force (a rejection changed nothing)
            self._kick.set()
        if error:
            self.rejected += 1
            with self._lock:
                self._last_error = error
            self._kick.set()
        elif self.store.version != version:
            self.applied += 1
            with self._lock:
                self._last_error = ""

    def status_event(self) -> dict[str, Any]:
        """The app's status plus the last rejected update (if any) and the live pause flag."""
        status = self.board.latest()
        data = messages.status_event(status)
        body = data[messages.NAMESPACE]
        error = self.last_error
        if error and not body.get("error"):
            body["error"] = error
        current = self.store.current
        body.setdefault("paused", current.paused)
        body.setdefault("preset", current.preset)
        return json.loads(json.dumps(data, default=str))  # JSON-safe whatever the runner put in extra
