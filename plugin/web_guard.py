"""Who may use the control page: an ASGI middleware that refuses foreign Host and Origin headers
(DNS rebinding, cross-site requests) and everyone without the per-install secret.

The secret arrives once in the address `dreamcam run` prints (`/?token=...`); it is exchanged for
an HttpOnly, SameSite=Strict session cookie and the token is taken out of the address (a redirect
to `/`). The cookie holds an HMAC of the secret, not the secret itself, so it is worthless on the
control port, and it stops working when the secret is rotated. WebSocket upgrades pass the same
checks before they are accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Callable, Iterable
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

log = logging.getLogger(__name__)

COOKIE = "dreamcam_web"
TOKEN_PARAM = "token"
# Sec-Fetch-Site values of requests the page itself makes, or an address typed/opened by the user
FETCH_SITES = frozenset({"same-origin", "none"})
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "content-security-policy": ("default-src 'self'; img-src 'self' blob:; connect-src 'self'{socket}; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
}  # {socket}: ws://HOST of the checked Host header, as older Chromiums (OBS's CEF) do not count ws: as 'self'
NO_TOKEN = ("dreamcam control page: open the address that `dreamcam run` printed "
            "(http://127.0.0.1:PORT/?token=...); the token is the control-port secret.")


def session_value(token: str) -> str:
    """The cookie's value for this secret."""
    return hmac.new(token.encode(), b"dreamcam web session", hashlib.sha256).hexdigest()


def allowed_hosts(bound_host: str, port: int) -> frozenset[str]:
    """Host headers the page answers: loopback names and the address it is bound to, with the port."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if bound_host not in ("", "0.0.0.0", "::"):
        names.add(f"[{bound_host}]" if ":" in bound_host else bound_host)
    return frozenset(f"{name}:{port}".lower() for name in names)


class WebGuard:
    """Wraps the page's ASGI app; `token()` is read on every request (a rotated secret counts at once)."""

    def __init__(self, app: ASGIApp, *, token: Callable[[], str], hosts: Iterable[str]) -> None:
        self.app = app
        self._token = token
        self.hosts = frozenset(h.lower() for h in hosts)
        self.origins = frozenset(f"http://{h}" for h in self.hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(headers)
        token = self._token()
        if refusal is None and scope["type"] == "http" and scope["path"] == "/":
            offered = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(TOKEN_PARAM)
            if offered is not None:
                await self._exchange(offered[0], token, scope, receive, send)
                return
        if refusal is None and not hmac.compare_digest(_cookie(headers).encode(), session_value(token).encode()):
            refusal = NO_TOKEN
        if refusal is not None:
            log.info("control page refused %s %s: %s", scope["type"], scope["path"], refusal.split(":")[0])
            await self._refuse(refusal, scope, receive, send)
            return
        await self.app(scope, receive, self._with_headers(send, headers.get("host", ""))
                       if scope["type"] == "http" else send)

    def _refusal(self, headers: Headers) -> str | None:
        if headers.get("host", "").lower() not in self.hosts:
            return "unexpected Host header: open the page at the address `dreamcam run` printed"
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.origins:
            return "cross-site request refused (Origin is not this page)"
        site = headers.get("sec-fetch-site")
        if site is not None and site not in FETCH_SITES:
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        return None

    async def _exchange(self, offered: str, token: str, scope: Scope, receive: Receive, send: Send) -> None:
        if not hmac.compare_digest(offered.encode(), token.encode()):
            await self._refuse("wrong token: " + NO_TOKEN, scope, receive, send)
            return
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/")
        await response(scope, receive, self._with_headers(send, Headers(scope=scope).get("host", "")))

    async def _refuse(self, text: str, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # closing before accepting answers the upgrade with 403
            await WebSocketClose(code=1008)(scope, receive, send)
            return
        response: Response = PlainTextResponse(text, status_code=403)
        await response(scope, receive, self._with_headers(send, ""))

    def _with_headers(self, send: Send, host: str) -> Send:
        """`host`: the Host header of a request that passed the checks ("" for a refusal)."""
        values = {k: v.replace("{socket}", f" ws://{host}" if host else "") for k, v in SECURITY_HEADERS.items()}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in values.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)
        return send_with_headers


def _cookie(headers: Headers) -> str:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""
