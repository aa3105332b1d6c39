"""The control page's web app (Starlette): the page and its files, a JSON API over the one settings
path (`SettingsStore.apply`) and the preset store, and a WebSocket that pushes settings, status,
presets and preview frames. Wrapped by `WebGuard` (Host, Origin, token) in web_service.py.

API (JSON; errors are `{"ok": false, "field": ..., "error": ...}` with status 400 or 404):
  GET  /api/schema                the settings schema the page builds its widgets from (no secret fields)
  GET  /api/state                 schema, settings, status, presets, start settings (no secrets)
  POST /api/settings              {"changes": {...}}: one all-or-nothing update; replies carry
                                  the settings in force and their version (as the pushes do)
  GET  /api/presets               names
  PUT  /api/presets/{name}        save the settings in force under that name
  POST /api/presets/{name}/load   apply the preset as one update
  DELETE /api/presets/{name}
  WS   /ws                        server -> page: {"type": "hello"|"settings"|"status"|"presets", ...}
                                  text messages, preview frames as binary (one kind byte + JPEG);
                                  page -> server: {"type": "preview", "kinds": ["output", "input"]}
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import config as presets
from . import schema
from .control import SettingsStore, StatusBoard
from .messages import MAX_MESSAGE_BYTES
from .settings import AppSettings, SettingsError, StreamSettings
from .web_feed import PageClient, PageFeed, status_view
from .web_preview import KINDS

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "web_static"
ORIGIN = "web"  # the origin SettingsStore listeners see for changes made on the page


# ---- what the page may see -------------------------------------------------------------------
def page_schema() -> dict[str, Any]:
    """The settings schema as JSON, without secret fields (the page never sees the OBS password)."""
    data = schema.to_json()
    return {**data, "fields": [f for f in data["fields"] if not f["secret"]]}


def public_app_settings(app: AppSettings) -> dict[str, Any]:
    """The start-only settings in force, secret fields left out."""
    shown = {f.name for f in schema.app_fields() if not f.secret}
    return {k: v for k, v in dataclasses.asdict(app).items() if k in shown}


# ---- request helpers -------------------------------------------------------------------------
class BadRequest(Exception):
    def __init__(self, field: str, error: str, status: int = 400) -> None:
        super().__init__(error)
        self.field, self.error, self.status = field, error, status


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number this page accepts")


async def _json_body(request: Request) -> Any:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest("request", "send JSON (Content-Type: application/json)", 415)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_MESSAGE_BYTES:
            raise BadRequest("request", f"more than the {MAX_MESSAGE_BYTES} bytes allowed", 413)
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise BadRequest("request", f"not JSON: {exc}") from None


def _settings_reply(store: SettingsStore) -> JSONResponse:
    settings, version = store.snapshot()
    return JSONResponse({"ok": True, "settings": settings.as_dict(), "version": version})


def _error(exc: BadRequest | SettingsError, status: int = 400) -> JSONResponse:
    if isinstance(exc, SettingsError):
        return JSONResponse({"ok": False, "field": exc.field, "error": str(exc)}, status_code=status)
    return JSONResponse({"ok": False, "field": exc.field, "error": exc.error}, status_code=exc.status)


# ---- the app ---------------------------------------------------------------------------------
def create_web_app(store: SettingsStore, board: StatusBoard, feed: PageFeed, app_settings: AppSettings,
                   on_viewer: Callable[[], None] = lambda: None) -> Starlette:
    """`on_viewer()` is called when a page connects (the preview encoder resends its frames)."""

    def state() -> dict[str, Any]:
        settings, version = store.snapshot()
        return {"schema": page_schema(), "settings": settings.as_dict(), "version": version,
                "status": status_view(board.latest()), "presets": presets.list_presets(),
                "app": public_app_settings(app_settings), "preview_kinds": list(KINDS)}

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html")

    async def get_schema(request: Request) -> Response:
        return JSONResponse(page_schema())

    async def get_state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(state))

    async def apply_settings(request: Request) -> Response:
        try:
            body = await _json_body(request)
            changes = body.get("changes") if isinstance(body, dict) else None
            if not isinstance(changes, dict):
                raise BadRequest("request", 'send {"changes": {"field": value, ...}}')
            unknown = sorted(set(changes) - schema.live_names())
            if unknown:  # the store ignores unknown fields; the page should hear about them
                raise BadRequest(unknown[0], f"{unknown[0]}: not a live setting")
            await run_in_threadpool(store.apply, changes, ORIGIN)
        except (BadRequest, SettingsError) as exc:
            return _error(exc)
        return _settings_reply(store)

    async def list_presets(request: Request) -> Response:
        return JSONResponse({"ok": True, "presets": await run_in_threadpool(presets.list_presets)})

    async def save_preset(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            await run_in_threadpool(presets.save_preset, name, store.current)
        except SettingsError as exc:
            return _error(exc)
        return await _presets_changed()

    async def load_preset(request: Request) -> Response:
        name = request.path_params["name"]

        def load() -> StreamSettings:
            return store.apply(presets.load_preset(name), ORIGIN)
        try:
            await run_in_threadpool(load)
        except SettingsError as exc:
            return _error(exc, 404 if "no preset named" in str(exc) else 400)
        return _settings_reply(store)

    async def delete_preset(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            deleted = await run_in_threadpool(presets.delete_preset, name)
        except SettingsError as exc:
            return _error(exc)
        if not deleted:
            return _error(BadRequest("preset", f"preset: no preset named {name!r}", 404))
        return await _presets_changed()

    async def _presets_changed() -> Response:
        message = await run_in_threadpool(feed.presets_message)
        feed.broadcast(message)
        return JSONResponse({"ok": True, "presets": message["presets"]})

    async def page_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        client = feed.add()
        try:
            hello = await run_in_threadpool(state)
            await websocket.send_text(json.dumps({"type": "hello", **hello}, default=str, allow_nan=False))
            on_viewer()
            tasks = [asyncio.create_task(_send_loop(websocket, client)),
                     asyncio.create_task(_receive_loop(websocket, client, feed, on_viewer))]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                        await task
        except WebSocketDisconnect:
            pass
        finally:
            feed.remove(client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        feed.bind(asyncio.get_running_loop())
        try:
            yield
        finally:
            feed.unbind()

    routes = [
        Route("/", index),
        Route("/api/schema", get_schema),
        Route("/api/state", get_state),
        Route("/api/settings", apply_settings, methods=["POST"]),
        Route("/api/presets", list_presets),
        Route("/api/presets/{name}", save_preset, methods=["PUT"]),
        Route("/api/presets/{name}", delete_preset, methods=["DELETE"]),
        Route("/api/presets/{name}/load", load_preset, methods=["POST"]),
        WebSocketRoute("/ws", page_socket),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _send_loop(websocket: WebSocket, client: PageClient) -> None:
    while True:
        for item in await client.next_batch():
            if isinstance(item, bytes):
                await websocket.send_bytes(item)
            else:
                await websocket.send_text(item)


async def _receive_loop(websocket: WebSocket, client: PageClient, feed: PageFeed,
                        on_viewer: Callable[[], None]) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        try:
            data = json.loads(message.get("text") or "null", parse_constant=_refuse_constant)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("type") == "preview" and isinstance(data.get("kinds"), list):
            feed.set_wants(client, frozenset(k for k in data["kinds"] if isinstance(k, str)))
            on_viewer()
