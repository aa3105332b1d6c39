"""Local control server (a service of the app): JSON lines over TCP on 127.0.0.1.

Each request line is a protocol event `{"dreamcam": {"v": 1, "kind": "settings", ...}}`; the
reply line is `{"ok": true, "status": {...}, "settings": {...}}` or `{"ok": false, "error": "..."}`.
A `settings` event may name a `preset` alone: its saved values are applied as one update.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
from typing import Any

from .control import SettingsStore, StatusBoard
from .messages import MAX_MESSAGE_BYTES, NAMESPACE, handle_event, settings_event
from .settings import SettingsError

log = logging.getLogger(__name__)

DEFAULT_PORT = 7861
HOST = "127.0.0.1"


def _expand_preset(event: Any) -> Any:
    """A settings event naming a preset gets the preset's values (explicit fields win)."""
    payload = event.get(NAMESPACE) if isinstance(event, dict) else None
    if not isinstance(payload, dict) or payload.get("kind") != "settings" or not payload.get("preset"):
        return event
    from .config import load_preset

    values = load_preset(payload["preset"])
    return {NAMESPACE: {**values, **payload}}


def check_port_free(port: int, host: str = HOST) -> None:
    """Raise the server's OSError now if another program listens on `port` (checked before a
    long model load, so a second `dreamcam run` fails at once)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _listen_error(host, port, exc) from exc


def _listen_error(host: str, port: int, exc: OSError) -> OSError:
    return OSError(f"control server: cannot listen on {host}:{port} ({exc}); "
                   "is another dreamcam running? pick another port with --control-port")


class ControlServer:
    def __init__(self, store: SettingsStore, board: StatusBoard, port: int = DEFAULT_PORT,
                 host: str = HOST) -> None:
        self.store, self.board = store, board
        self.host, self.port = host, port
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        handler = self._make_handler()
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        try:
            server = socketserver.ThreadingTCPServer((self.host, self.port), handler)
        except OSError as exc:
            raise _listen_error(self.host, self.port, exc) from exc
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="dreamcam-control", daemon=True)
        self._thread.start()
        log.info("control server on %s:%d", self.host, self.port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(2.0)

    def handle_line(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_MESSAGE_BYTES:
            return {"ok": False, "error": f"message is {len(line)} bytes, more than the {MAX_MESSAGE_BYTES} allowed"}
        try:
            event = json.loads(line)  # NaN/Infinity literals parse; the settings checks refuse them
        except (ValueError, RecursionError) as exc:  # bad JSON or bytes, a 5000-digit number, deep nesting
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
            return {"ok": False, "error": f"not JSON: {reason}"}
        try:
            event = _expand_preset(event)
        except SettingsError as exc:
            return {"ok": False, "error": f"rejected update: {exc}"}
        error = handle_event(self.store, event, origin="control")
        reply: dict[str, Any] = {"ok": error is None, "status": self.board.latest().as_dict(),
                                 "settings": self.store.current.as_dict()}
        if error:
            reply["error"] = error
        return reply

    def _make_handler(self):
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    line = self.rfile.readline(MAX_MESSAGE_BYTES + 2)  # bounded: no endless line
                    if not line:
                        return
                    if not line.strip():
                        continue
                    too_long = not line.endswith(b"\n") and len(line) > MAX_MESSAGE_BYTES
                    try:
                        reply = server.handle_line(line.strip())
                    except Exception as exc:  # never drop a connection without a reply
                        log.exception("control message failed")
                        reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
                    self.wfile.write((json.dumps(reply, default=str) + "\n").encode())
                    self.wfile.flush()
                    if too_long:  # the rest of that line would be read as garbage: hang up
                        return

        return Handler


def send_settings(changes: dict[str, Any], port: int = DEFAULT_PORT, host: str = HOST,
                  timeout: float = 5.0) -> dict[str, Any]:
    """Send one settings update to a running app; returns its reply."""
    return send_event(settings_event(changes), port, host, timeout)


def send_event(event: dict[str, Any], port: int = DEFAULT_PORT, host: str = HOST,
               timeout: float = 5.0) -> dict[str, Any]:
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall((json.dumps(event) + "\n").encode())
            reader = conn.makefile("rb")
            line = reader.readline()
    except OSError as exc:
        raise ConnectionError(f"no dreamcam app answers on {host}:{port} ({exc}); start one with "
                              "`dreamcam run`") from exc
    if not line:
        raise ConnectionError(f"the app on {host}:{port} closed the connection without a reply")
    return json.loads(line)
