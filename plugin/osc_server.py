"""OSC service of the app (python-osc, UDP): messages on the schema's addresses (osc_map) become
`SettingsStore.apply` updates; each one is answered with the values now in force or with
`/dreamcam/error`, to the sender or to a fixed feedback target, which also gets changes made
elsewhere and a `/dreamcam/status/...` stream about once a second."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Iterable

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import build_msg
from pythonosc.osc_server import BlockingOSCUDPServer

from . import osc_map
from .control import SettingsStore, StatusBoard
from .control_actions import run_action
from .control_fields import control_fields, field_named, is_ranged, to_unit
from .settings import SettingsError, StreamSettings

log = logging.getLogger(__name__)

ORIGIN = "osc"
HOST = "127.0.0.1"
Address = tuple[str, int]


def parse_target(text: str, what: str = "osc_feedback") -> Address:
    """"HOST:PORT" -> (host, port); SettingsError naming `what` when it is not that."""
    host, colon, port = str(text).strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(what, f"expected HOST:PORT, e.g. 127.0.0.1:9001, got {text!r}")
    return host.strip("[]"), int(port)


def check_port_free(port: int, host: str = HOST) -> None:
    """Raise the service's OSError now when the UDP port is taken (before a long model load)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _listen_error(host, port, exc) from exc


def _listen_error(host: str, port: int, exc: OSError) -> OSError:
    return OSError(f"OSC: cannot listen on {host}:{port} ({exc}); pick another port with --osc-port")


def value_messages(names: Iterable[str], settings: StreamSettings) -> list[tuple[str, list[Any]]]:
    """The messages that show `names`' values in force: `/dreamcam/<field>` and, for ranged
    fields, `/dreamcam/norm/<field>`; the preset's name on `/dreamcam/preset` ('' for none)."""
    out: list[tuple[str, list[Any]]] = []
    for name in names:
        value = getattr(settings, name)
        if name == "preset":
            out.append((f"{osc_map.ROOT}/preset", [value or ""]))
            continue
        out.append((f"{osc_map.ROOT}/{name}", list(value) if isinstance(value, tuple) else [value]))
        if is_ranged(field_named(name)):
            out.append((f"{osc_map.NORM_PREFIX}{name}", [to_unit(field_named(name), value)]))
    return out


def changed_fields(before: StreamSettings, after: StreamSettings) -> list[str]:
    old, new = before.as_dict(), after.as_dict()
    return [name for name in new if new[name] != old[name]]


class OscServer:
    """A service (`start`/`stop`) for DreamcamApp.add_service. `port` 0 picks a free one (tests);
    `feedback` (host, port): where replies, changes and the status go instead of the sender."""

    def __init__(self, store: SettingsStore, board: StatusBoard, port: int, host: str = HOST,
                 feedback: Address | None = None, status_interval: float = 1.0) -> None:
        self.store, self.board = store, board
        self.host, self.port = host, port
        self.feedback = feedback
        self.status_interval = status_interval
        self._routes = osc_map.routes()
        self._server: BlockingOSCUDPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._send_lock = threading.Lock()
        self._known = store.current

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(self._on_message, needs_reply_address=True)
        try:
            server = BlockingOSCUDPServer((self.host, self.port), dispatcher)
        except OSError as exc:
            raise _listen_error(self.host, self.port, exc) from exc
        self._server = server
        self.port = server.server_address[1]
        self._stopped.clear()
        self._known = self.store.current
        self._spawn("dreamcam-osc", lambda: server.serve_forever(poll_interval=0.1))
        if self.feedback is not None:
            self.store.subscribe(self._on_settings)
            self._spawn("dreamcam-osc-status", self._status_loop)
        target = f", feedback to {self.feedback[0]}:{self.feedback[1]}" if self.feedback else ""
        log.info("OSC on %s:%d (udp)%s", self.host, self.port, target)

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stopped.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            with self._send_lock:
                server.server_close()
        for thread in self._threads:
            thread.join(2.0)
        self._threads = []

    # ---- incoming --------------------------------------------------------------------------
    def _on_message(self, sender: Address, address: str, *args: Any) -> None:
        try:
            self.handle(address, list(args), sender)
        except Exception:  # a bad packet must never stop the service
            log.exception("OSC message %s failed", address)

    def handle(self, address: str, args: list[Any], sender: Address) -> None:
        """Answer one message (the server thread calls this; tests may too)."""
        reply_to = self.feedback or sender
        route = self._routes.get(address)
        if route is None:
            if address.startswith(osc_map.ROOT + "/"):
                self._refuse(reply_to, address, f"unknown address {address}; the list is in docs/control.md "
                                                 f"(e.g. {osc_map.ROOT}/strength)")
            return
        if route.kind == osc_map.SYNC:
            names = [f.name for f in control_fields()] + ["preset"]
            self._send(reply_to, value_messages(names, self.store.current))
            return
        if route.kind == osc_map.FIELD and not args:  # a query
            self._send(reply_to, value_messages([route.field], self.store.current))
            return
        before = self.store.current
        try:
            after = run_action(self.store, osc_map.action_for(route, args), ORIGIN)
        except SettingsError as exc:
            self._refuse(reply_to, address, str(exc))
            return
        names = changed_fields(before, after)
        if route.field and route.field not in names:
            names.append(route.field)  # unchanged: still confirm, so a fader snaps to the value in force
        self._send(reply_to, value_messages(names, after))

    def _refuse(self, reply_to: Address, address: str, reason: str) -> None:
        log.warning("OSC %s refused: %s", address, reason)
        self._send(reply_to, [(osc_map.ERROR_ADDRESS, [reason, address])])

    # ---- outgoing --------------------------------------------------------------------------
    def _on_settings(self, settings: StreamSettings, origin: str) -> None:
        """Changes made elsewhere (OBS, the page, MIDI, `dreamcam set`) go to the feedback target."""
        with self._send_lock:
            before, self._known = self._known, settings
        if origin != ORIGIN and self.feedback is not None and not self._stopped.is_set():
            self._send(self.feedback, value_messages(changed_fields(before, settings), settings))

    def _status_loop(self) -> None:
        while not self._stopped.wait(self.status_interval):
            status = self.board.latest().as_dict()
            self._send(self.feedback, [(osc_map.STATUS_PREFIX + key, [status[key]])
                                       for key in osc_map.status_keys()])

    def _send(self, target: Address, messages: list[tuple[str, list[Any]]]) -> None:
        with self._send_lock:
            server = self._server
            if server is None:
                return
            for address, args in messages:
                try:
                    server.socket.sendto(build_msg(address, args).dgram, target)
                except OSError as exc:  # an unreachable controller must not stop the service
                    log.info("OSC reply to %s:%s failed: %s", target[0], target[1], exc)
