"""What the control page is told, as it happens: settings changes from any surface, the status,
the preset list and preview frames, fanned out from the app's threads to every open page over its
WebSocket (the asyncio loop of the web server)."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
from typing import Any, Callable

from .control import SettingsStore, Status, StatusBoard
from .settings import StreamSettings
from .web_preview import KINDS

log = logging.getLogger(__name__)

MAX_QUEUED = 256  # messages a slow page may fall behind by; older ones are dropped (newer state wins)


def status_view(status: Status) -> dict[str, Any]:
    """The status as JSON-safe data (a rate that is not a number yet is null)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in status.as_dict().items()}


class PageClient:
    """One open page: JSON messages in order, and the newest preview frame of each kind."""

    def __init__(self) -> None:
        self._messages: collections.deque[str] = collections.deque(maxlen=MAX_QUEUED)
        self._frames: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self.wants: frozenset[str] = frozenset({"output"})

    def push(self, text: str) -> None:
        self._messages.append(text)
        self._wake.set()

    def push_frame(self, kind: str, jpeg: bytes) -> None:
        self._frames[kind] = bytes([KINDS.index(kind)]) + jpeg
        self._wake.set()

    async def next_batch(self) -> list[str | bytes]:
        await self._wake.wait()
        self._wake.clear()
        batch: list[str | bytes] = list(self._messages)
        self._messages.clear()
        batch.extend(self._frames.values())
        self._frames.clear()
        return batch


class PageFeed:
    """Subscribes to the store and the board while bound to a loop; thread-safe `post_*` methods."""

    def __init__(self, store: SettingsStore, board: StatusBoard, presets: Callable[[], list[str]]) -> None:
        self.store, self.board = store, board
        self._presets = presets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[PageClient] = set()
        self.wanted: frozenset[str] = frozenset()  # preview kinds any page wants (read by the encoder)

    # ---- lifecycle (on the loop) -----------------------------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.store.subscribe(self._on_settings)
        self.board.subscribe(self._on_status)

    def unbind(self) -> None:
        self.store.unsubscribe(self._on_settings)
        self.board.unsubscribe(self._on_status)
        self._loop = None

    def add(self) -> PageClient:
        client = PageClient()
        self._clients.add(client)
        self._update_wanted()
        return client

    def remove(self, client: PageClient) -> None:
        self._clients.discard(client)
        self._update_wanted()

    def set_wants(self, client: PageClient, kinds: frozenset[str]) -> None:
        client.wants = frozenset(kinds) & frozenset(KINDS)
        self._update_wanted()

    def _update_wanted(self) -> None:
        self.wanted = frozenset().union(*(c.wants for c in self._clients)) if self._clients else frozenset()

    # ---- messages --------------------------------------------------------------------------
    def settings_message(self, origin: str = "") -> dict[str, Any]:
        """The settings in force with their version: the page keeps the newest of what reaches it
        over the socket and in replies, which may arrive in either order."""
        settings, version = self.store.snapshot()
        return {"type": "settings", "settings": settings.as_dict(), "version": version, "origin": origin}

    def status_message(self, status: Status) -> dict[str, Any]:
        return {"type": "status", "status": status_view(status)}

    def presets_message(self) -> dict[str, Any]:
        return {"type": "presets", "presets": self._presets()}

    def broadcast(self, message: dict[str, Any]) -> None:
        """On the loop: send to every page."""
        text = json.dumps(message, default=str, allow_nan=False)
        for client in self._clients:
            client.push(text)

    # ---- from other threads ----------------------------------------------------------------
    def post(self, message: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self.broadcast, message)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    def post_frame(self, kind: str, jpeg: bytes) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._send_frame, kind, jpeg)
        except RuntimeError:
            pass

    def _send_frame(self, kind: str, jpeg: bytes) -> None:
        for client in self._clients:
            if kind in client.wants:
                client.push_frame(kind, jpeg)

    def _on_settings(self, settings: StreamSettings, origin: str) -> None:
        self.post(self.settings_message(origin))

    def _on_status(self, status: Status) -> None:
        self.post(self.status_message(status))
