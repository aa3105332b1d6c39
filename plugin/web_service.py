"""The control page as a service of the app: uvicorn serving the page's app (web_app.py, behind
web_guard.py) in its own thread, plus the preview encoder; `stop` closes the port.

Listens on 127.0.0.1:7862 by default (`AppSettings.web_port`, 0 = off); another address only with
an explicit `--web-host`. `url` is the address to open, with the per-install secret in it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Callable

import uvicorn

from . import config as presets
from . import secret
from .control import SettingsStore, StatusBoard
from .settings import AppSettings
from .web_app import create_web_app
from .web_feed import PageFeed
from .web_guard import TOKEN_PARAM, WebGuard, allowed_hosts
from .web_preview import DEFAULT_FPS, FrameTap, PreviewEncoder

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def _listen_error(host: str, port: int, exc: OSError) -> OSError:
    return OSError(f"control page: cannot listen on {host}:{port} ({exc}); is another dreamcam running? "
                   "pick another port with --web-port (0 turns the page off)")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or OSError naming the port and the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of a last run is fine
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise _listen_error(host, port, exc) from exc
    return sock


def check_port_free(port: int, host: str = DEFAULT_HOST) -> None:
    """Raise the service's OSError now if the port is taken (before a long model load)."""
    bind_socket(host, port).close()


class WebService:
    """`start()` returns once the page answers; `stop()` ends the server and frees the port."""

    def __init__(self, store: SettingsStore, board: StatusBoard, frames: FrameTap, app_settings: AppSettings,
                 *, host: str = DEFAULT_HOST, port: int | None = None, token: Callable[[], str] | None = None,
                 preview_fps: float = DEFAULT_FPS) -> None:
        self.host = host
        self.port = app_settings.web_port if port is None else port  # 0 here: any free port (tests)
        # the control port's per-install secret, read again when `dreamcam token --rotate` changes it
        self._token = token or secret.SecretFile().current
        self.feed = PageFeed(store, board, presets.list_presets)
        self.preview = PreviewEncoder(frames, self.feed.post_frame, lambda: self.feed.wanted, preview_fps)
        self._page = create_web_app(store, board, self.feed, app_settings, on_viewer=self.preview.resend)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        """The address to open (the token in it is exchanged for a cookie and removed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
        return f"http://{host}:{self.port}/?{TOKEN_PARAM}={self._token()}"

    def start(self) -> None:
        self._token()  # a broken secret file fails now, with its own message
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        guarded = WebGuard(self._page, token=self._token, hosts=allowed_hosts(self.host, self.port))
        config = uvicorn.Config(guarded, loop="asyncio", http="h11", ws="websockets-sansio", lifespan="on",
                                log_config=None, log_level="warning", access_log=False, server_header=False,
                                proxy_headers=False, ws_max_size=64 * 1024, timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        self._sock, self._server = sock, server
        self._thread = threading.Thread(target=self._serve, name="dreamcam-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"control page: the web server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.preview.start()
        log.info("control page on http://%s:%d/", self.host, self.port)

    def _serve(self) -> None:
        assert self._server is not None and self._sock is not None
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def stop(self) -> None:
        self.preview.stop()
        server, thread, sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
            if thread.is_alive():
                log.warning("control page: the web server did not stop within %.0f s", STOP_TIMEOUT_S)
        if sock is not None:
            sock.close()
