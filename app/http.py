"""HTTP on PORT: health, the status page, its API, the QR code, the metrics and (with
SESSIONKEEPER_CDP) the DevTools proxy of app/cdp.py.

/healthz (the process is alive), /readyz (the sessions' state) and the page's script and style
are always open, for the platform's probes. With SESSIONKEEPER_HTTP_TOKEN set everything else
asks for the token: a bearer header (API clients, CDP), a cookie, or a `?token=` query (a
phone's browser opening the page has no header to send). On the page itself `?token=` is
exchanged once for an HttpOnly, SameSite=Strict cookie and a 303 to the same URL without it, so
the token leaves the address bar, the page's own requests and any proxy's log; other paths
(the API, /qr, /cdp) still accept it as a query for clients that cannot set headers. A page
opened from another site gets no Strict cookie, so it reloads itself once from this origin.
Nothing is cached by a browser, and the page may not be framed: whoever scans its QR code
links their account into this browser.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

from aiohttp import web

from app.cdp import CdpRoutes
from app.log import get_logger, register_secret
from app.metrics import CONTENT_TYPE, Metrics
from app.qr import render_qr
from app.status import StatusBoard
from app.status_page import render_page

ReadyFn = Callable[[], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The page's script and style hold nothing secret; open so a 401 never breaks the page.
ASSETS = {"/static/status.js": "application/javascript", "/static/status.css": "text/css"}
OPEN_PATHS = frozenset({"/healthz", "/readyz", *ASSETS})
# The HTML pages: a ?token= on them is exchanged for the cookie.
PAGE_PATHS = frozenset({"/"})
COOKIE = "sessionkeeper_auth"
_PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
_HTML = {**_PRIVATE, "Content-Security-Policy": CSP, "X-Frame-Options": "DENY"}


def token_of(request: web.Request) -> str | None:
    """The token a request presents: bearer header first, else ?token=."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token")


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the token itself is not stored in
    the browser's cookie jar."""
    return hmac.new(token.encode(), b"sessionkeeper status page cookie",
                    hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _is_https(request: web.Request) -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _auth_middleware(token: str) -> Any:
    cookie = cookie_value(token)
    register_secret(token)
    register_secret(cookie)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        query = request.query.get("token")
        page = request.method in ("GET", "HEAD") and request.path in PAGE_PATHS
        if page and query is not None and _same(query, token):
            return _exchange(request, cookie)
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        bearer = value.strip() if scheme.lower() == "bearer" and value.strip() else None
        if (_same(bearer, token) or _same(request.cookies.get(COOKIE), cookie)
                or (bearer is None and not page and _same(query, token))):
            return await handler(request)
        if page and _cross_site_navigation(request):
            return _reload_same_site()
        return web.json_response(
            {"error": "a token is required: Authorization: Bearer <token> or ?token="},
            status=401, headers={**_PRIVATE, "WWW-Authenticate": 'Bearer realm="status"'})

    return check


def _cross_site_navigation(request: web.Request) -> bool:
    """A page opened from a link on another site (a chat, a mail): the browser withholds a
    SameSite=Strict cookie from it, and from the 303 that follows an exchange too."""
    return (request.method == "GET" and request.headers.get("Sec-Fetch-Mode") == "navigate"
            and request.headers.get("Sec-Fetch-Site") == "cross-site")


def _reload_same_site() -> web.Response:
    """Load the same URL again from this origin, which sends the cookie. That request is
    same-origin, so it never lands here twice."""
    return web.Response(text='<!doctype html><meta http-equiv="refresh" content="0">'
                        "<title>sessionkeeper</title>", content_type="text/html",
                        charset="utf-8", headers=_HTML)


def _exchange(request: web.Request, cookie: str) -> web.Response:
    """303 to the same URL without ?token=, with the cookie that authenticates from now on."""
    rest = [(k, v) for k, v in request.query.items() if k != "token"]
    clean = request.rel_url.with_query(rest) if rest else request.rel_url.with_query(None)
    response = web.Response(status=303, headers={**_PRIVATE, "Location": str(clean)})
    response.set_cookie(COOKIE, cookie, path="/", httponly=True, samesite="Strict",
                        secure=_is_https(request))
    return response


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
        _add_status_routes(app, board, metrics)
    if cdp is not None:
        cdp.add_to(app)
    return app


def _add_status_routes(app: web.Application, board: StatusBoard,
                       metrics: Metrics | None) -> None:
    async def page(_: web.Request) -> web.Response:
        overview = await board.overview()
        return web.Response(text=render_page(overview), content_type="text/html",
                            charset="utf-8", headers=_HTML)

    async def asset(request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[-1]
        body = resources.files("app").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=ASSETS[request.path], headers=_PRIVATE)

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

    async def favicon(_: web.Request) -> web.Response:
        """Browsers ask for it on every page: an empty answer, not a 404 in the console."""
        return web.Response(status=204)

    app.router.add_get("/", page)
    app.router.add_get("/favicon.ico", favicon)
    for path in ASSETS:
        app.router.add_get(path, asset)
    app.router.add_get("/api/sessions", sessions)
    app.router.add_get("/qr/{session}", qr)
    if metrics is not None:
        app.router.add_get("/metrics", prometheus)


# Every IPv4 and every IPv6 address: Railway's private network is IPv6 only, its public
# proxy and Render's reach the service over IPv4.
ANY_HOSTS = ("0.0.0.0", "::")  # noqa: S104


class HttpServer:
    """Runs the app on port, on each of hosts, until stopped."""

    def __init__(self, app: web.Application, port: int,
                 hosts: Sequence[str] = ANY_HOSTS) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.hosts = tuple(hosts)
        self.port = port
        self.bound: list[str] = []

    async def start(self) -> None:
        """Bind and serve. An IPv6 address on a machine without IPv6 is skipped (logged);
        any other bind error, or none bound at all, raises."""
        await self._runner.setup()
        for host in self.hosts:
            site = web.TCPSite(self._runner, host, self.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                if ":" not in host or exc.errno not in _NO_IPV6:
                    raise
                get_logger().info("ipv6_unavailable", host=host, port=self.port,
                                  reason=str(exc))
                continue
            self.bound.append(host)
        if not self.bound:
            raise OSError(f"could not listen on port {self.port}")

    async def stop(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()


# Binding '::' where the kernel has no IPv6 (ipv6.disable=1, some containers).
_NO_IPV6 = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})
