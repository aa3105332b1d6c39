"""Helpers for the control-page tests: the real app with its real web service, raw HTTP and
WebSocket clients that send exactly the headers a test wants, and Debian's headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.web_guard import COOKIE
from dreamcam.plugin.web_service import WebService

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextlib.contextmanager
def running_page(app: DreamcamApp, **service_options: Any) -> Iterator[WebService]:
    """Start `app` with its control page on a free port; stop both at the end."""
    page = WebService(app.store, app.board, app.latest_frames, app.settings, port=0, **service_options)
    app.add_service(page)
    app.start()
    try:
        yield page
    finally:
        app.stop()


def token_of(page: WebService) -> str:
    return page.url.split("token=", 1)[1]


class Http:
    """One HTTP/1.1 client to the page; every header is the test's to choose."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: Any = None, *, host: str | None = None,
                origin: str | None = None, cookie: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        sent = {"Host": host or f"127.0.0.1:{self.port}", **(headers or {})}
        if origin is not None:
            sent["Origin"] = origin
        if cookie is not None:
            sent["Cookie"] = f"{COOKIE}={cookie}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
            sent["Content-Length"] = str(len(data))
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in sent.items():
                conn.putheader(key, value)
            conn.endheaders(data)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def login(self, token: str) -> str:
        """Exchange the token for the session cookie; returns the cookie's value."""
        status, headers, _ = self.request("GET", f"/?token={token}")
        assert status == 303, status
        return headers["set-cookie"].split(";")[0].split("=", 1)[1]


    def upgrade(self, path: str = "/ws", **options: Any) -> int:
        """A WebSocket upgrade request with these headers: 101 when accepted, else the refusal's status."""
        handshake = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
        status, _, _ = self.request("GET", path, headers={**handshake, **options.pop("headers", {})}, **options)
        return status


async def page_hello(port: int, cookie: str) -> dict:
    """The first message a real WebSocket client gets from /ws (with the session cookie)."""
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10,
                                  additional_headers={"Cookie": f"{COOKIE}={cookie}"}) as socket:
        return json.loads(await asyncio.wait_for(socket.recv(), 10))


def chromium(width: int = 320, height: int = 1000):
    """Debian's headless Chromium through its chromedriver (scripts/dev-setup.sh installs both).
    A missing browser fails the test: CI must run what these tests claim to check."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: run scripts/dev-setup.sh "
                    "(apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def screenshot_path(default: Path) -> Path:
    """Where the page's screenshot goes: $DREAMCAM_SCREENSHOT (to refresh docs/control-page.png) or `default`."""
    return Path(os.environ.get("DREAMCAM_SCREENSHOT") or default)
