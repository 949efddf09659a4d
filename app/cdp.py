"""`/cdp/{session}`: automation clients attach to a session's Chromium through the daemon's port.

The convention of browserless, Browserbase and Kernel: someone else keeps the browser, a client
(Playwright's `connect_over_cdp`, Puppeteer's `connect`) attaches to it. Chromium's own DevTools
endpoint listens on loopback only; the daemon answers `/cdp/{session}/json/version` like
Chromium does, with a `webSocketDebuggerUrl` pointing back at itself (`wss://` behind a TLS
proxy that sets X-Forwarded-Proto), and proxies the WebSocket. The URL stays the same across a
relaunch of Chromium (login checkpoint, crash): the browser's id in the path is not checked,
and a client arriving while Chromium relaunches waits for it. The token of the rest of the
page protects it; with SESSIONKEEPER_CDP_BIND set to a local address, only connections made to
that address are answered.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import aiohttp
import anyio
from aiohttp import WSMsgType, web

from app.browser import DevTools
from app.errors import ConfigError
from app.log import get_logger
from app.settings import Settings

# A client arriving during a relaunch waits this long for Chromium before a 503.
WAIT_FOR_BROWSER_S = 15.0
_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_KINDS = frozenset({"browser", "page", "worker", "shared_worker", "service_worker", "iframe"})
_NO_STORE = {"Cache-Control": "no-store"}
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CdpSession(Protocol):
    """A session whose Chromium may be attached to."""

    session_id: str

    @property
    def devtools(self) -> DevTools | None:
        """Chromium's DevTools endpoint while it runs (None between launches)."""
        ...


Lookup = Callable[[str], CdpSession | None]


def check_cdp_settings(settings: Settings) -> None:
    """CDP hands out a logged-in browser: refuse it unprotected unless it stays local."""
    if not settings.cdp or settings.http_token is not None:
        return
    if settings.cdp_bind is not None and settings.cdp_bind.is_loopback:
        return
    raise ConfigError(
        "SESSIONKEEPER_CDP=true without SESSIONKEEPER_HTTP_TOKEN would hand the logged-in "
        "browser to anyone who reaches PORT: set a token, or SESSIONKEEPER_CDP_BIND=127.0.0.1 "
        "to keep it local")


def public_base(request: web.Request) -> str:
    """ws://host or wss://host as the client sees the daemon (X-Forwarded-* behind a proxy)."""
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    secure = proto in ("https", "wss") if proto else request.secure
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
    return f"{'wss' if secure else 'ws'}://{host}"


class CdpRoutes:
    """The /cdp routes of the daemon's HTTP app."""

    def __init__(self, lookup: Lookup, bind: IpAddress | None) -> None:
        self.lookup = lookup
        self.bind = bind
        self.log = get_logger()

    def add_to(self, app: web.Application) -> None:
        """Register the routes."""
        # Playwright asks for /json/version/ (a trailing slash), as Chromium allows.
        for slash in ("", "/"):
            app.router.add_get(f"/cdp/{{session}}/json/version{slash}", self.version)
            app.router.add_get(f"/cdp/{{session}}/json/list{slash}", self.listing)
            app.router.add_get(f"/cdp/{{session}}/json{slash}", self.listing)
        app.router.add_get("/cdp/{session}", self.socket)
        app.router.add_get("/cdp/{session}/devtools/{kind}", self.socket)
        app.router.add_get("/cdp/{session}/devtools/{kind}/{id}", self.socket)

    # ---------------------------------------------------------------- plumbing

    def _local_ok(self, request: web.Request) -> bool:
        if self.bind is None or self.bind.is_unspecified:
            return True
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if not sockname:
            return False
        address = ipaddress.ip_address(sockname[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address == self.bind

    async def _endpoint(self, request: web.Request) -> tuple[CdpSession, DevTools]:
        """The session's DevTools endpoint, waiting while Chromium relaunches."""
        if not self._local_ok(request):
            raise web.HTTPForbidden(
                text=f'{{"error": "CDP answers only on {self.bind}"}}',
                content_type="application/json", headers=_NO_STORE)
        name = request.match_info["session"]
        session = self.lookup(name)
        if session is None:
            raise web.HTTPNotFound(text=f'{{"error": "no session {name!r} runs here"}}',
                                   content_type="application/json", headers=_NO_STORE)
        deadline = time.monotonic() + WAIT_FOR_BROWSER_S
        while (devtools := session.devtools) is None:
            if time.monotonic() > deadline:
                raise web.HTTPServiceUnavailable(
                    text='{"error": "the browser is not running; retry shortly"}',
                    content_type="application/json", headers={**_NO_STORE, "Retry-After": "2"})
            await anyio.sleep(0.1)
        return session, devtools

    def _ws_url(self, request: web.Request, path: str) -> str:
        """A DevTools WebSocket path of Chromium's, as reached through the daemon."""
        session = request.match_info["session"]
        # A client that authenticated with ?token= has no header to send on the WebSocket.
        token = request.query.get("token")
        query = f"?{urlencode({'token': token})}" if token else ""
        return f"{public_base(request)}/cdp/{session}{path}{query}"

    async def _get_json(self, devtools: DevTools, path: str) -> Any:
        try:
            async with aiohttp.ClientSession() as http, http.get(
                    devtools.base + path, timeout=aiohttp.ClientTimeout(total=10)) as response:
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise web.HTTPBadGateway(text=f'{{"error": "the browser did not answer: {exc}"}}',
                                     content_type="application/json") from None

    # ---------------------------------------------------------------- handlers

    async def version(self, request: web.Request) -> web.Response:
        """Chromium's /json/version, its WebSocket URL pointing back here."""
        _, devtools = await self._endpoint(request)
        info = await self._get_json(devtools, "/json/version")
        info["webSocketDebuggerUrl"] = self._ws_url(request, devtools.browser_path)
        return web.json_response(info, headers=_NO_STORE)

    async def listing(self, request: web.Request) -> web.Response:
        """Chromium's /json/list (its targets), WebSocket URLs pointing back here."""
        _, devtools = await self._endpoint(request)
        targets = await self._get_json(devtools, "/json/list")
        for target in targets if isinstance(targets, list) else []:
            target.pop("devtoolsFrontendUrl", None)  # Chromium's own UI on its own port
            url = target.get("webSocketDebuggerUrl")
            if url:
                target["webSocketDebuggerUrl"] = self._ws_url(request, urlsplit(url).path)
        return web.json_response(targets, headers=_NO_STORE)

    async def socket(self, request: web.Request) -> web.StreamResponse:
        """Proxy a DevTools WebSocket (the browser's, whatever id the path names, or a
        target's); a plain GET of /cdp/{session} answers like /json/version."""
        kind = request.match_info.get("kind", "browser")
        target_id = request.match_info.get("id")
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if not upgrade:
            if "kind" in request.match_info:
                raise web.HTTPBadRequest(text="a WebSocket endpoint")
            return await self.version(request)
        if kind not in _KINDS or (target_id is not None and not _ID.match(target_id)):
            raise web.HTTPNotFound()
        if kind != "browser" and target_id is None:
            raise web.HTTPNotFound()
        session, devtools = await self._endpoint(request)
        path = devtools.browser_path if kind == "browser" else f"/devtools/{kind}/{target_id}"
        return await self._proxy(request, session, devtools, path)

    async def _proxy(self, request: web.Request, session: CdpSession, devtools: DevTools,
                     path: str) -> web.StreamResponse:
        log = self.log.bind(session_id=session.session_id)
        started = time.monotonic()
        async with aiohttp.ClientSession() as http:
            try:
                # No Origin header goes on: the daemon has checked the client already.
                upstream = await http.ws_connect(f"ws://127.0.0.1:{devtools.port}{path}",
                                                 max_msg_size=0, autoping=True)
            except (aiohttp.ClientError, OSError) as exc:
                raise web.HTTPBadGateway(
                    text=f'{{"error": "the browser refused the connection: {exc}"}}',
                    content_type="application/json") from None
            client = web.WebSocketResponse(max_msg_size=0, heartbeat=30.0)
            await client.prepare(request)
            log.info("cdp_client_connected", path=path, peer=request.remote)
            counts = {"to_browser": 0, "to_client": 0}
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump, client, upstream, counts, "to_browser", tg.cancel_scope)
                tg.start_soon(_pump, upstream, client, counts, "to_client", tg.cancel_scope)
            browser_gone = upstream.closed and not client.closed
            await upstream.close()
            # 1001 "going away": the browser closed (a checkpoint or a crash); reconnect.
            await client.close(code=aiohttp.WSCloseCode.GOING_AWAY if browser_gone
                               else aiohttp.WSCloseCode.OK,
                               message=b"browser restarting: reconnect" if browser_gone else b"")
            log.info("cdp_client_disconnected", path=path, by="browser" if browser_gone
                     else "client", duration_ms=int((time.monotonic() - started) * 1000),
                     **counts)
        return client


async def _pump(source: Any, sink: Any, counts: dict[str, int], key: str,
                scope: anyio.CancelScope) -> None:
    """Copy messages one way until either side closes; then end both directions."""
    try:
        async for message in source:
            if message.type == WSMsgType.TEXT:
                await sink.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            else:
                break
            counts[key] += 1
    except (aiohttp.ClientError, ConnectionError, RuntimeError):
        pass  # a side went away mid-send
    finally:
        scope.cancel()
