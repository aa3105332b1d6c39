"""Local control server (a service of the app): authenticated JSON lines over TCP on 127.0.0.1.

The protocol (docs/control-protocol.md): each request line is
`{"token": SECRET, "dreamcam": {"v": 1, "kind": "hello" | "settings" | "bye", ...}}`, each reply
line `{"ok": true, "status": {...}, "settings": {...}}` or `{"ok": false, "error": "..."}`. The
secret is the per-install one of `secret.py`. A line that is not a valid message (not JSON, no or a
wrong token, an HTTP request line, an unknown kind) gets an error reply and the connection is
closed; a settings update that is refused (a bad value, an unknown field) gets an error reply and
the connection stays open. One asyncio loop on one thread serves every connection: at most
`MAX_CONNECTIONS` at once (more are answered "busy" and closed), each closed after
`IDLE_TIMEOUT_S` without a complete line, each line at most `MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import re
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

from . import secret
from .control import SettingsStore, StatusBoard
from .messages import MAX_MESSAGE_BYTES, NAMESPACE, MessageError, decode, settings_event
from .settings import STREAM_FIELDS, SettingsError

log = logging.getLogger(__name__)

DEFAULT_PORT = 7861
HOST = "127.0.0.1"
MAX_CONNECTIONS = 16
MAX_WAITING = 256  # connections beyond MAX_CONNECTIONS wait this many at most for a free slot ...
WAIT_FOR_SLOT_S = 1.0  # ... this long at most; the others are answered "busy" at once
IDLE_TIMEOUT_S = 5.0
BACKLOG = 256  # a burst of connections waits in the kernel for the accept loop, not refused
TOKEN_KEY = "token"
ENVELOPE_KEYS = (TOKEN_KEY, NAMESPACE)
SOCKET_KINDS = ("hello", "settings", "bye")  # what a client may send on this socket
LINGER_BYTES = 256 * 1024  # read and dropped after a refusal, so the refusal reply is not lost to a reset
LINGER_S = 1.0
BUSY_RETRIES = 4
HTTP_REQUEST_LINE = re.compile(rb"^[A-Z]{3,10} \S+ HTTP/\d")


class ProtocolError(ValueError):
    """A line that is not a valid message: answered, then the connection is closed."""


@dataclass(frozen=True)
class Answer:
    reply: dict[str, Any]
    close: bool = False


def _listen_error(host: str, port: int, exc: OSError) -> OSError:
    if exc.errno == errno.EADDRINUSE or getattr(exc, "winerror", None) in (10048, 10013):
        return OSError(f"control port {host}:{port} is in use: another Dreamcam is running (or another "
                       "program has the port); stop it or pick another port with --control-port")
    return OSError(f"control port {host}:{port}: cannot listen ({exc.strerror or exc}); pick another port "
                   "with --control-port")


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or OSError saying the port is taken. Binding is atomic:
    of two apps started at the same instant exactly one gets the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if sys.platform == "win32":  # SO_REUSEADDR there would let another program take the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:  # a previous run's connections in TIME_WAIT must not block a restart
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise _listen_error(host, port, exc) from None
    sock.setblocking(False)
    return sock


class ControlServer:
    """`listen()` takes the port (before a long model load, so a second app fails at once);
    `start()` serves (listening first if needed); `stop()` closes every connection. The secret is
    created at `listen()` when there is none yet."""

    def __init__(self, store: SettingsStore, board: StatusBoard, port: int = DEFAULT_PORT,
                 host: str = HOST, *, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT_S) -> None:
        self.store, self.board = store, board
        self.host, self.port = host, port
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self._secret = secret.SecretFile()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._connections: set[asyncio.Task] = set()
        self._serving = 0  # slots taken (touched on the loop's thread only)
        self._waiters: deque[asyncio.Future] = deque()
        self.admitted = 0  # connections served
        self.refused = 0  # connections answered "busy"

    @property
    def open_connections(self) -> int:
        """Connections being served (not those waiting for a slot)."""
        return self._serving

    # ---- lifecycle -------------------------------------------------------------------------
    def listen(self) -> None:
        if self._sock is not None:
            return
        self._secret.current()  # first run: the secret exists before anyone needs it
        self._sock = bind_listener(self.host, self.port)
        self.port = self._sock.getsockname()[1]

    def start(self) -> None:
        if self._thread is not None:
            return
        self.listen()
        self._thread = threading.Thread(target=self._run, name="dreamcam-control", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)
        if self._failure is not None:
            self.stop()
            raise OSError(f"control server: could not start ({self._failure})")
        log.info("control server on %s:%d", self.host, self.port)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
            self._thread.join(5.0)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:
            self._failure = exc
            log.exception("control server stopped")
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self._sock, limit=MAX_MESSAGE_BYTES,
                                            backlog=BACKLOG)
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    # ---- one connection --------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        admitted = False
        try:
            admitted = await self._take_slot()
            if admitted:
                self.admitted += 1
                await self._converse(reader, writer)
            else:
                self.refused += 1
                await self._finish(writer, {"ok": False, "busy": True, "error":
                                            f"busy: {self.max_connections} connections are open; try again"})
        except (ConnectionError, asyncio.TimeoutError):
            pass  # the client went away or stopped reading
        except asyncio.CancelledError:  # stop(): end quietly (asyncio's stream callback of 3.11
            pass                         # reports a cancelled handler as an error)
        finally:
            if admitted:
                self._release_slot()
            self._connections.discard(task)
            writer.close()

    async def _take_slot(self) -> bool:
        """One of `max_connections` slots, waited for briefly in a bounded queue (a burst of
        well-behaved clients is served, not refused); False: answer busy."""
        if self._serving < self.max_connections:
            self._serving += 1
            return True
        if len(self._waiters) >= MAX_WAITING:
            return False
        ticket = asyncio.get_running_loop().create_future()
        self._waiters.append(ticket)
        try:
            return await asyncio.wait_for(ticket, WAIT_FOR_SLOT_S)
        except asyncio.TimeoutError:
            return False
        finally:
            if ticket in self._waiters:
                self._waiters.remove(ticket)

    def _release_slot(self) -> None:
        while self._waiters:  # the slot passes to the oldest waiter still waiting
            ticket = self._waiters.popleft()
            if not ticket.done():
                ticket.set_result(True)
                return
        self._serving -= 1

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), self.idle_timeout)
            except asyncio.TimeoutError:
                await self._finish(writer, _error(f"idle: no complete line within {self.idle_timeout:g} s; "
                                                  "closed"), reader)
                return
            except ValueError:  # no newline within the limit: the rest is never read
                await self._finish(writer, _error(f"line longer than {MAX_MESSAGE_BYTES} bytes; closed"),
                                   reader)
                return
            if not line:
                return
            if not line.strip():
                continue
            answer = self._answer_safely(line.strip())
            if answer.close:
                await self._finish(writer, answer.reply, reader)
                return
            await self._send(writer, answer.reply)
            if not line.endswith(b"\n"):  # the client closed its side after this line
                return

    async def _send(self, writer: asyncio.StreamWriter, reply: Mapping[str, Any]) -> None:
        writer.write((json.dumps(reply, default=str) + "\n").encode())
        await asyncio.wait_for(writer.drain(), self.idle_timeout)

    async def _finish(self, writer: asyncio.StreamWriter, reply: Mapping[str, Any],
                      reader: asyncio.StreamReader | None = None) -> None:
        """Send the last reply and close; with `reader`, first drop what the client still sends
        (bounded), so closing with unread data does not reset the connection before the client
        has read the reply."""
        try:
            await self._send(writer, reply)
            if reader is not None and writer.can_write_eof():
                writer.write_eof()
                await asyncio.wait_for(_drain_input(reader, LINGER_BYTES), LINGER_S)
        except (ConnectionError, asyncio.TimeoutError, OSError):
            pass
        finally:
            writer.close()

    # ---- one line --------------------------------------------------------------------------
    def _answer_safely(self, line: bytes) -> Answer:
        try:
            return self.answer(line)
        except Exception as exc:  # whatever happens, the client gets a reply and the server goes on
            log.exception("control server: a message could not be handled")
            return Answer(_error(f"internal error ({type(exc).__name__}); see the app's log"), close=True)

    def answer(self, line: bytes) -> Answer:
        """The reply to one request line and whether the connection closes after it."""
        try:
            envelope = _parse(line)
            self._authenticate(envelope)
            kind, fields = _message(envelope)
        except ProtocolError as exc:
            log.info("control server: refused a line: %s", exc)
            return Answer(_error(str(exc)), close=True)
        except secret.SecretError as exc:
            return Answer(_error(f"the app cannot read its control token: {exc}"), close=True)
        if kind == "settings":
            try:
                self._apply(fields)
            except SettingsError as exc:
                return Answer({**self._state(), "ok": False, "error": f"rejected update: {exc}"})
        return Answer(self._state(), close=kind == "bye")

    def _authenticate(self, envelope: Mapping[str, Any]) -> None:
        if not secret.matches(envelope.get(TOKEN_KEY), self._secret.current()):
            what = "wrong" if TOKEN_KEY in envelope else "missing"
            raise ProtocolError(f"unauthorized: {what} \"{TOKEN_KEY}\"; {secret.where()}")

    def _apply(self, fields: dict[str, Any]) -> None:
        unknown = sorted(set(fields) - STREAM_FIELDS)
        if unknown:
            raise SettingsError(unknown[0], f"unknown setting; known: {', '.join(sorted(STREAM_FIELDS))}")
        if fields.get("preset"):  # a preset's saved values, the explicit fields winning
            from .config import load_preset

            fields = {**load_preset(fields["preset"]), **fields}
        self.store.apply(fields, origin="control")

    def _state(self) -> dict[str, Any]:
        return {"ok": True, "status": self.board.latest().as_dict(), "settings": self.store.current.as_dict()}


def _error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": text}


def _parse(line: bytes) -> dict[str, Any]:
    if HTTP_REQUEST_LINE.match(line):
        raise ProtocolError("an HTTP request: this port speaks JSON lines, not HTTP "
                            "(see docs/control-protocol.md)")
    try:
        data = json.loads(line)  # NaN, Infinity and long integers parse: the settings checks name the field
    except RecursionError:
        raise ProtocolError("not JSON we accept: nested too deeply") from None
    except ProtocolError:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"not a message: expected a JSON object, got {type(data).__name__}")
    return data



def _message(envelope: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    extra = sorted(set(envelope) - set(ENVELOPE_KEYS))
    if extra:
        raise ProtocolError(f"{extra[0]}: unknown key; a line holds only \"{TOKEN_KEY}\" and \"{NAMESPACE}\"")
    try:
        message = decode(envelope)
    except MessageError as exc:
        raise ProtocolError(str(exc)) from None
    if message is None:
        raise ProtocolError(f"not a dreamcam message: expected {{\"{TOKEN_KEY}\": ..., \"{NAMESPACE}\": "
                            "{\"v\": 1, \"kind\": ...}}")
    if message.kind not in SOCKET_KINDS:
        raise ProtocolError(f"kind {message.kind!r} is not accepted here; send one of {', '.join(SOCKET_KINDS)}")
    return message.kind, dict(message.fields)


async def _drain_input(reader: asyncio.StreamReader, limit: int) -> None:
    while limit > 0:
        chunk = await reader.read(min(limit, 65536))
        if not chunk:
            return
        limit -= len(chunk)


# ---- the client side (dreamcam set, tests, scripts in Python) --------------------------------
def send_settings(changes: Mapping[str, Any], port: int = DEFAULT_PORT, host: str = HOST,
                  timeout: float = 5.0, token: str | None = None) -> dict[str, Any]:
    """Send one settings update to a running app; returns its reply."""
    return send_event(settings_event(changes), port, host, timeout, token)


def send_event(event: Mapping[str, Any], port: int = DEFAULT_PORT, host: str = HOST,
               timeout: float = 5.0, token: str | None = None) -> dict[str, Any]:
    """Send one protocol event with the secret (default: this install's, read from its file) and
    return the reply; a "busy" reply is retried a few times with a short back-off.
    Raises ConnectionError when nothing answers, SecretError when the secret cannot be read."""
    line = (json.dumps({TOKEN_KEY: _installed_token() if token is None else token, **event}) + "\n").encode()
    for attempt in range(BUSY_RETRIES + 1):
        reply = _exchange(line, host, port, timeout)
        if not reply.get("busy") or attempt == BUSY_RETRIES:
            return reply
        time.sleep(0.05 * 2 ** attempt)
    return reply


def _installed_token() -> str:
    """A client reads the secret and never makes one: only an app (or `dreamcam token`) does."""
    try:
        return secret.read()
    except FileNotFoundError:
        raise secret.SecretError(f"no control token at {secret.secret_path()}: no Dreamcam app has run with "
                                 "this config folder yet; start one with `dreamcam run`") from None


def _exchange(line: bytes, host: str, port: int, timeout: float) -> dict[str, Any]:
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(line)
            answer = conn.makefile("rb").readline(MAX_MESSAGE_BYTES * 4)
    except OSError as exc:
        raise ConnectionError(f"no dreamcam app answers on {host}:{port} ({exc}); start one with "
                              "`dreamcam run`") from exc
    if not answer:
        raise ConnectionError(f"the app on {host}:{port} closed the connection without a reply")
    try:
        return json.loads(answer)
    except ValueError as exc:
        raise ConnectionError(f"{host}:{port} answered something that is not a dreamcam reply ({exc})") from None
