"""The demo site's HTTP server: a QR login like WhatsApp Web's, with stateless tokens.

A browser shows a rotating QR payload; approving it out of band (`POST /api/link` or
`DemoSite.link()`, the "phone scan") lets the page fetch a device token, which it keeps in
IndexedDB, localStorage and a cookie. Tokens are HMAC(DEMO_SECRET, device_id), so any server
instance accepts them: a session restored into a fresh container stays logged in.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import segno
from aiohttp import web

# Fixed on purpose: tokens must verify across server restarts. This is a demo, not a secret.
DEMO_SECRET: Final[bytes] = b"sessionkeeper-demo-site-v1"

STATIC_DIR: Final[Path] = Path(__file__).parent / "static"

# Approved payloads stay pollable this long, so a page that noticed the approval late still
# gets its token; older ones are dropped so the map cannot grow without bound.
_APPROVAL_TTL = 600.0
_MAX_PAYLOAD_LEN = 200
_NO_STORE = {"Cache-Control": "no-store"}
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}


def make_token(device_id: str) -> str:
    """The token for a device: hex HMAC-SHA256 of its id under DEMO_SECRET."""
    return hmac.new(DEMO_SECRET, device_id.encode(), hashlib.sha256).hexdigest()


def verify_token(token: str, device_id: str) -> bool:
    """True when `token` is the token of `device_id` (constant-time compare)."""
    return hmac.compare_digest(make_token(device_id).encode(), token.encode())


def _new_payload() -> str:
    return "2@" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class _Approval:
    device_id: str
    token: str
    at: float


class DemoSite:
    """The demo site on an aiohttp server; `start()` it, point a browser at `url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, message_rate: float = 30.0,
                 qr_rotate_seconds: float = 20.0, history_kb: int = 0) -> None:
        if message_rate < 0 or history_kb < 0:
            raise ValueError("message_rate must be >= 0")
        if qr_rotate_seconds <= 0:
            raise ValueError("qr_rotate_seconds must be > 0")
        self._host = host
        self._port = port
        self._message_rate = float(message_rate)
        # Chat history the page downloads right after a link, as WhatsApp Web does.
        self._history_kb = int(history_kb)
        self._rotate = float(qr_rotate_seconds)
        self._payload = _new_payload()
        self._payload_at = time.monotonic()
        self._approved: dict[str, _Approval] = {}
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        """Start serving; returns the base URL, e.g. "http://127.0.0.1:PORT/"."""
        if self._runner is not None:
            raise RuntimeError("DemoSite already started")
        runner = web.AppRunner(self._make_app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"http://{host}:{port}/"
        return self._url

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def port(self) -> int:
        """The port asked for, or the one bound once started with port 0."""
        return self._runner.addresses[0][1] if self._runner is not None else self._port

    @property
    def message_rate(self) -> float:
        """Messages per minute a ready page writes."""
        return self._message_rate

    @property
    def history_kb(self) -> int:
        """KiB of chat history a newly linked page syncs."""
        return self._history_kb

    @property
    def url(self) -> str:
        """Base URL with a trailing slash; only valid after `start()`."""
        if self._url is None:
            raise RuntimeError("DemoSite not started")
        return self._url

    # -- login state ----------------------------------------------------------------------

    def _rotate_if_due(self) -> None:
        now = time.monotonic()
        if now - self._payload_at >= self._rotate:
            self._payload = _new_payload()
            self._payload_at = now
        # Prune here too: it runs on every QR request, so the map stays small.
        stale = [p for p, a in self._approved.items() if now - a.at > _APPROVAL_TTL]
        for p in stale:
            del self._approved[p]

    @property
    def current_payload(self) -> str:
        """The QR payload shown now (a fresh one every `qr_rotate_seconds`)."""
        self._rotate_if_due()
        return self._payload

    def _expires_in(self) -> float:
        return max(0.0, self._rotate - (time.monotonic() - self._payload_at))

    def link(self, payload: str | None = None) -> bool:
        """Approve the current payload (the phone scan); False if `payload` is not current.

        A payload is single-use: approving it rotates to a fresh one at once, as a real QR
        login does. Pages poll the payload they displayed, so they still see the approval.
        """
        current = self.current_payload
        if payload is not None and payload != current:
            return False
        device_id = uuid.uuid4().hex
        self._approved[current] = _Approval(device_id, make_token(device_id), time.monotonic())
        self._payload = _new_payload()
        self._payload_at = time.monotonic()
        return True

    # -- HTTP -----------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/sw.js", self._service_worker)
        app.router.add_get("/api/qr", self._qr)
        app.router.add_get("/api/qr.svg", self._qr_svg)
        app.router.add_post("/api/link", self._link)
        app.router.add_get("/api/poll", self._poll)
        app.router.add_get("/api/verify", self._verify)
        app.router.add_get("/api/config", self._config)
        app.router.add_get("/{name:[^/]+}", self._static)
        return app

    @staticmethod
    def _json(data: object, status: int = 200) -> web.Response:
        return web.json_response(data, status=status, headers=_NO_STORE)

    @staticmethod
    def _file(name: str, extra: dict[str, str] | None = None) -> web.Response:
        path = (STATIC_DIR / name).resolve()
        # Only plain files directly inside static/; no traversal, no dotfiles.
        if name.startswith(".") or path.parent != STATIC_DIR.resolve() or not path.is_file():
            raise web.HTTPNotFound()
        headers = {
            "Content-Type": _CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
            # Revalidate every time: the page must never run a stale app.js after an update.
            "Cache-Control": "no-cache",
        }
        headers.update(extra or {})
        return web.Response(body=path.read_bytes(), headers=headers)

    async def _index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def _service_worker(self, request: web.Request) -> web.Response:
        return self._file("sw.js", {"Service-Worker-Allowed": "/"})

    async def _static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    async def _qr(self, request: web.Request) -> web.Response:
        payload = self.current_payload
        return self._json({"payload": payload, "expires_in": round(self._expires_in(), 3)})

    async def _qr_svg(self, request: web.Request) -> web.Response:
        # Renders whatever it is given (it is just an image of a string); the length cap keeps
        # the work bounded.
        payload = request.query.get("payload", "")
        if not payload or len(payload) > _MAX_PAYLOAD_LEN:
            raise web.HTTPBadRequest(text="payload missing or too long")
        # A standalone SVG document (with xmlns); svg_inline() output does not load as <img>.
        buf = io.BytesIO()
        segno.make_qr(payload, error="m").save(buf, kind="svg", scale=6, border=2, dark="#111",
                                               xmldecl=False)
        return web.Response(body=buf.getvalue(), content_type="image/svg+xml",
                            headers=_NO_STORE)

    async def _link(self, request: web.Request) -> web.Response:
        payload: str | None = None
        if request.can_read_body:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return self._json({"linked": False, "error": "body is not JSON"}, 400)
            if isinstance(body, dict) and body.get("payload") is not None:
                if not isinstance(body["payload"], str):
                    return self._json({"linked": False, "error": "payload must be a string"}, 400)
                payload = body["payload"]
        current = self.current_payload
        if not self.link(payload):
            return self._json({"linked": False, "error": "payload is not the current QR code"},
                              409)
        return self._json({"linked": True, "payload": payload or current})

    async def _poll(self, request: web.Request) -> web.Response:
        approval = self._approved.get(request.query.get("payload", ""))
        if approval is None:
            return self._json({"linked": False})
        return self._json({"linked": True, "token": approval.token,
                           "device_id": approval.device_id})

    async def _verify(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "")
        device_id = request.query.get("device_id", "")
        return self._json({"valid": bool(token and device_id) and verify_token(token, device_id)})

    async def _config(self, request: web.Request) -> web.Response:
        return self._json({"message_rate": self._message_rate, "history_kb": self._history_kb})
