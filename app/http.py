"""HTTP on PORT: health, the status page, its API, the QR code, the metrics and (with
SESSIONKEEPER_CDP) the DevTools proxy of app/cdp.py.

/healthz (the process is alive) and /readyz (the sessions' state) are always open, for the
platform's probes. With SESSIONKEEPER_HTTP_TOKEN set everything else asks for the token, as a
bearer header or a `?token=` query (a phone's browser opening the page has no header to send).
Nothing is cached by a browser: the QR code logs in as the session while it lasts.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from app.cdp import CdpRoutes
from app.metrics import CONTENT_TYPE, Metrics
from app.qr import render_qr
from app.status import StatusBoard
from app.status_page import render_page

ReadyFn = Callable[[], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff"}


def token_of(request: web.Request) -> str | None:
    """The token a request presents: bearer header first, else ?token=."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token")


def _auth_middleware(token: str) -> Any:
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        given = token_of(request)
        if given is None or not hmac.compare_digest(given.encode(), expected):
            return web.json_response(
                {"error": "a token is required: Authorization: Bearer <token> or ?token="},
                status=401, headers={**_PRIVATE, "WWW-Authenticate": 'Bearer realm="status"'})
        return await handler(request)

    return check


def build_app(ready: ReadyFn, board: StatusBoard | None = None,
              metrics: Metrics | None = None, token: str | None = None,
              cdp: CdpRoutes | None = None) -> web.Application:
    """The aiohttp application; ready() is what /readyz reports; cdp adds /cdp/{session}."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers={"Cache-Control": "no-store"})

    async def readyz(_: web.Request) -> web.Response:
        facts = ready()
        code = 200 if facts.get("ready") else 503
        return web.json_response(facts, status=code, headers={"Cache-Control": "no-store"})

    app = web.Application(middlewares=[_auth_middleware(token)] if token else [])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if board is not None:
        _add_status_routes(app, board, metrics, token)
    if cdp is not None:
        cdp.add_to(app)
    return app


def _add_status_routes(app: web.Application, board: StatusBoard, metrics: Metrics | None,
                       token: str | None) -> None:
    async def page(request: web.Request) -> web.Response:
        overview = await board.overview()
        # The page carries a token given as ?token= to its image and API requests.
        given = request.query.get("token") if token else None
        return web.Response(text=render_page(overview, given), content_type="text/html",
                            charset="utf-8", headers=_PRIVATE)

    async def sessions(_: web.Request) -> web.Response:
        return web.json_response(await board.overview(), headers=_PRIVATE)

    async def qr(request: web.Request) -> web.Response:
        session = request.match_info["session"]
        kind = request.query.get("format", "png")
        if kind == "code":
            code = board.pairing_code(session)
            if code is None:
                return web.json_response({"error": "no pairing code shown"}, status=404,
                                         headers=_PRIVATE)
            return web.Response(text=code, content_type="text/plain", headers=_PRIVATE)
        payload = board.qr_payload(session)
        if payload is None:
            return web.json_response({"error": "no QR code shown (no login needed, a pairing "
                                      "code instead: ?format=code, or the code expired)"},
                                     status=404, headers=_PRIVATE)
        if kind == "raw":
            return web.Response(text=payload, content_type="text/plain", headers=_PRIVATE)
        if kind not in ("png", "svg"):
            return web.json_response({"error": "format is png, svg, raw or code"}, status=400,
                                     headers=_PRIVATE)
        body = render_qr(payload, "svg" if kind == "svg" else "png")
        return web.Response(body=body, content_type=f"image/{'svg+xml' if kind == 'svg' else kind}",
                            headers=_PRIVATE)

    async def prometheus(_: web.Request) -> web.Response:
        assert metrics is not None
        metrics.refresh(board.local())
        return web.Response(body=metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE, **_PRIVATE})

    app.router.add_get("/", page)
    app.router.add_get("/api/sessions", sessions)
    app.router.add_get("/qr/{session}", qr)
    if metrics is not None:
        app.router.add_get("/metrics", prometheus)


class HttpServer:
    """Runs the app on host:port until stopped."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Bind and serve."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()
