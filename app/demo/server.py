"""The demo site's HTTP server: a login like WhatsApp Web's, with stateless tokens.

A browser shows a rotating QR payload; approving it out of band (`POST /api/link` or
`DemoSite.link()`, the "phone scan") lets the page fetch a device token, which it keeps in
IndexedDB, localStorage and a cookie. A pairing code (`POST /api/pairing`, approved with
`DemoSite.link_code()`) links the same way. Tokens are HMAC(DEMO_SECRET, device_id), so any
server instance accepts them: a session restored into a fresh container stays logged in.

Pages heartbeat (`POST /api/heartbeat`) about once a second; the answer carries what the
"phone" and the operator decided (`/api/control`, `DemoSite.set_*`, `unlink`): phone offline,
another window active for this device, the device logged out, a blocking screen.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NamedTuple

import segno
from aiohttp import web

# Fixed on purpose: tokens must verify across server restarts. This is a demo, not a secret.
DEMO_SECRET: Final[bytes] = b"sessionkeeper-demo-site-v1"

STATIC_DIR: Final[Path] = Path(__file__).parent / "static"

# Blocking screens `set_screen` can show; the page maps each to WhatsApp's Socket state
# (deprecated: DEPRECATED_VERSION, blocked: TOS_BLOCK, mystery: a state nobody knows).
SCREENS: Final[frozenset[str]] = frozenset({"deprecated", "blocked", "mystery"})

# Approved payloads stay pollable this long, so a page that noticed the approval late still
# gets its token; older ones are dropped so the map cannot grow without bound.
_APPROVAL_TTL = 600.0
# A pairing request nobody polled for this long belongs to a page that is gone.
_PAIRING_IDLE_TTL = 120.0
_MAX_PAIRINGS = 256
_MAX_USER_AGENTS = 64
_MAX_PAYLOAD_LEN = 200
_MAX_ID_LEN = 64
# WhatsApp's pairing codes: 8 characters of an alphabet without 0/O, I and U look-alikes.
_CODE_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
_CODE_LEN = 8
_PHONE = re.compile(r"\d{6,15}")
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
# index.html carries this marker; the server turns it off for `set_modules(False)`.
_MODULES_ON = 'data-modules="on"'
_MODULES_OFF = 'data-modules="off"'


def make_token(device_id: str) -> str:
    """The token for a device: hex HMAC-SHA256 of its id under DEMO_SECRET."""
    return hmac.new(DEMO_SECRET, device_id.encode(), hashlib.sha256).hexdigest()


def verify_token(token: str, device_id: str) -> bool:
    """True when `token` is the token of `device_id` (constant-time compare)."""
    return hmac.compare_digest(make_token(device_id).encode(), token.encode())


def normalize_code(code: str) -> str:
    """A pairing code as the site compares it: no dashes or spaces, upper case."""
    return re.sub(r"[\s-]", "", code).upper()


def _new_payload() -> str:
    return "2@" + secrets.token_urlsafe(24)


def _new_code() -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LEN))


def _phone_digits(phone: str) -> str:
    digits = re.sub(r"[\s()+.-]", "", phone)
    if not _PHONE.fullmatch(digits):
        raise ValueError(f"not a phone number: {phone!r} (6-15 digits, '+' allowed)")
    return digits


@dataclass(frozen=True)
class _Approval:
    device_id: str
    token: str
    at: float


@dataclass
class _Pairing:
    phone: str
    code: str | None  # None once approved: a code links once
    code_at: float
    polled_at: float
    approval: _Approval | None = None


class PairingCode(NamedTuple):
    """A pairing request's current code; `ref` is what the page polls with."""

    ref: str
    code: str
    expires_in: float


class DemoSite:
    """The demo site on an aiohttp server; `start()` it, point a browser at `url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, message_rate: float = 30.0,
                 qr_rotate_seconds: float = 20.0, history_kb: int = 0,
                 qr_idle_after: float = 120.0, pairing_rotate_seconds: float = 180.0) -> None:
        if message_rate < 0 or history_kb < 0:
            raise ValueError("message_rate and history_kb must be >= 0")
        if qr_rotate_seconds <= 0 or qr_idle_after <= 0 or pairing_rotate_seconds <= 0:
            raise ValueError(
                "qr_rotate_seconds, qr_idle_after and pairing_rotate_seconds must be > 0")
        self._host = host
        self._port = port
        self._message_rate = float(message_rate)
        # Chat history the page downloads right after a link, as WhatsApp Web does.
        self._history_kb = int(history_kb)
        self._rotate = float(qr_rotate_seconds)
        self._qr_idle_after = float(qr_idle_after)
        self._pairing_rotate = float(pairing_rotate_seconds)
        self._payload = _new_payload()
        self._payload_at = time.monotonic()
        self._approved: dict[str, _Approval] = {}
        # Approved payload -> the page load (instance id) that took it: one scan links one
        # page, even where several pages (sessions of one process) showed the same code.
        self._claims: dict[str, str] = {}
        self._pairings: OrderedDict[str, _Pairing] = OrderedDict()
        # Per device, the page load (instance id) that holds the session; others get CONFLICT.
        self._active: dict[str, str] = {}
        self._known: set[str] = set()
        self._revoked: set[str] = set()
        # After unlink() of every device, only devices linked since then stay valid.
        self._revoke_all = False
        self._linked_since_revoke: set[str] = set()
        self._phone_online = True
        self._screen: str | None = None
        self._modules = True
        self._user_agents: OrderedDict[str, None] = OrderedDict()
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

    # -- QR login -------------------------------------------------------------------------

    def _rotate_if_due(self) -> None:
        now = time.monotonic()
        if now - self._payload_at >= self._rotate:
            self._payload = _new_payload()
            self._payload_at = now
        # Prune here too: it runs on every QR request, so the map stays small.
        stale = [p for p, a in self._approved.items() if now - a.at > _APPROVAL_TTL]
        for p in stale:
            del self._approved[p]
            self._claims.pop(p, None)

    @property
    def current_payload(self) -> str:
        """The QR payload shown now (a fresh one every `qr_rotate_seconds`)."""
        self._rotate_if_due()
        return self._payload

    def _expires_in(self) -> float:
        return max(0.0, self._rotate - (time.monotonic() - self._payload_at))

    def _new_device(self) -> _Approval:
        device_id = uuid.uuid4().hex
        self._known.add(device_id)
        if self._revoke_all:
            self._linked_since_revoke.add(device_id)
        return _Approval(device_id, make_token(device_id), time.monotonic())

    def link(self, payload: str | None = None) -> bool:
        """Approve the current payload (the phone scan); False if `payload` is not current.

        A payload is single-use: approving it rotates to a fresh one at once, as a real QR
        login does. Pages poll the payload they displayed, so they still see the approval; the
        first page to poll it takes it (one scan links one page, however many showed the code).
        """
        current = self.current_payload
        if payload is not None and payload != current:
            return False
        self._approved[current] = self._new_device()
        self._payload = _new_payload()
        self._payload_at = time.monotonic()
        return True

    def refresh_payload(self, expired: str) -> str:
        """A fresh current payload for a page whose code `expired` (reload button,
        `Cmd.refreshQR()`): rotates now if `expired` is still the current one."""
        if self.current_payload == expired:
            self._payload = _new_payload()
            self._payload_at = time.monotonic()
        return self._payload

    # -- pairing codes --------------------------------------------------------------------

    def _prune_pairings(self) -> None:
        now = time.monotonic()
        for ref, p in list(self._pairings.items()):
            gone = (now - p.approval.at > _APPROVAL_TTL if p.approval is not None
                    else now - p.polled_at > _PAIRING_IDLE_TTL)
            if gone:
                del self._pairings[ref]
        while len(self._pairings) > _MAX_PAIRINGS:
            self._pairings.popitem(last=False)

    def _pairing_code(self, pairing: _Pairing) -> str | None:
        """The request's code, rotated first if due."""
        now = time.monotonic()
        if pairing.code is not None and now - pairing.code_at >= self._pairing_rotate:
            pairing.code = _new_code()
            pairing.code_at = now
        return pairing.code

    def request_pairing(self, phone: str, ref: str | None = None) -> PairingCode:
        """A pairing code for `phone` (what `startAltLinkingFlow` asks for): a fresh code for
        the open request `ref`, else a new request. ValueError for a malformed phone number."""
        digits = _phone_digits(phone)
        self._prune_pairings()
        now = time.monotonic()
        pairing = self._pairings.get(ref) if ref is not None else None
        if ref is None or pairing is None or pairing.approval is not None:
            ref = uuid.uuid4().hex
            pairing = _Pairing(phone=digits, code=None, code_at=now, polled_at=now)
        self._pairings[ref] = pairing
        self._pairings.move_to_end(ref)
        pairing.phone, pairing.code, pairing.code_at, pairing.polled_at = (
            digits, _new_code(), now, now)
        return PairingCode(ref, pairing.code, self._pairing_rotate)

    @property
    def current_pairing_code(self) -> str | None:
        """The code of the newest open pairing request (rotated if due), None without one."""
        for pairing in reversed(self._pairings.values()):
            if pairing.approval is None:
                return self._pairing_code(pairing)
        return None

    def link_code(self, code: str) -> bool:
        """Approve a pairing code (typed on the phone); False unless it is a current code.

        Dashes, spaces and case do not matter. Like a QR payload, a code links once.
        """
        wanted = normalize_code(code)
        for pairing in self._pairings.values():
            if pairing.approval is None and self._pairing_code(pairing) == wanted:
                pairing.approval = self._new_device()
                pairing.code = None
                return True
        return False

    # -- the "phone": devices, sessions, logout -------------------------------------------

    def is_revoked(self, device_id: str) -> bool:
        """True once `unlink` logged the device out."""
        return device_id in self._revoked or (
            self._revoke_all and device_id not in self._linked_since_revoke)

    def unlink(self, device_id: str | None = None) -> list[str]:
        """Log a device out from the phone (default: every device, including ones this
        server never saw); its pages go to the QR page. Returns the known ids revoked."""
        if device_id is None:
            revoked = sorted(d for d in self._known if not self.is_revoked(d))
            self._revoke_all = True
            self._linked_since_revoke = set()
        else:
            revoked = [] if self.is_revoked(device_id) else [device_id]
            self._revoked.add(device_id)
        for d in revoked:
            self._active.pop(d, None)
        return revoked

    def active_instance(self, device_id: str) -> str | None:
        """The page load (its instance id, demoInspect().instance) that holds the device's
        session; heartbeats of any other page of that device answer "conflict"."""
        return self._active.get(device_id)

    def _session(self, instance: str, device_id: Any, token: Any, *, claim: bool,
                 standby: bool) -> str:
        if device_id is None and token is None:
            return "none"
        if not (isinstance(device_id, str) and isinstance(token, str) and device_id and token
                and verify_token(token, device_id)):
            return "invalid"
        if self.is_revoked(device_id):
            return "revoked"
        self._known.add(device_id)
        active = self._active.get(device_id)
        # A page that starts with valid creds, or takes over, becomes the active one; with
        # none recorded (a fresh server), the first page that asks gets it.
        if claim or (active is None and not standby):
            self._active[device_id] = instance
            return "active"
        return "active" if active == instance else "conflict"

    # -- operator controls ----------------------------------------------------------------

    @property
    def phone_online(self) -> bool:
        """False: logged-in pages show "Phone not connected" (Socket state TIMEOUT)."""
        return self._phone_online

    def set_phone_online(self, online: bool) -> None:
        """Take the phone offline or back; pages follow within a heartbeat (about 1 s)."""
        self._phone_online = bool(online)

    @property
    def screen(self) -> str | None:
        """The blocking screen every page shows, None for normal operation."""
        return self._screen

    def set_screen(self, name: str | None) -> None:
        """Show a blocking screen on every page ("deprecated", "blocked", "mystery"), or None
        to go back to normal; pages follow within a heartbeat."""
        if name is not None and name not in SCREENS:
            raise ValueError(f"unknown screen {name!r}: use one of {sorted(SCREENS)} or None")
        self._screen = name

    @property
    def modules(self) -> bool:
        """Whether pages expose WhatsApp's modules through `window.require`."""
        return self._modules

    def set_modules(self, enabled: bool) -> None:
        """False: from the next page load, `window.require` knows none of the modules (as if
        WhatsApp renamed them); the DOM stays the same."""
        self._modules = bool(enabled)

    def _controls(self) -> dict[str, Any]:
        return {"phone_online": self._phone_online, "screen": self._screen,
                "modules": self._modules}

    @property
    def user_agents(self) -> list[str]:
        """The distinct User-Agent headers of requests received, oldest first, at most 64
        (the least recently seen dropped first); "" for requests without one."""
        return list(self._user_agents)

    def _note_user_agent(self, value: str) -> None:
        self._user_agents[value] = None
        self._user_agents.move_to_end(value)
        while len(self._user_agents) > _MAX_USER_AGENTS:
            self._user_agents.popitem(last=False)

    # -- HTTP -----------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        @web.middleware
        async def record_user_agent(
                request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            self._note_user_agent(request.headers.get("User-Agent", ""))
            return await handler(request)

        app = web.Application(middlewares=[record_user_agent])
        app.router.add_get("/", self._index)
        app.router.add_get("/sw.js", self._service_worker)
        app.router.add_get("/api/qr", self._qr)
        app.router.add_post("/api/qr", self._qr_refresh)
        app.router.add_get("/api/qr.svg", self._qr_svg)
        app.router.add_post("/api/link", self._link)
        app.router.add_get("/api/poll", self._poll)
        app.router.add_post("/api/pairing", self._pairing_request)
        app.router.add_get("/api/pairing", self._pairing_poll)
        app.router.add_post("/api/heartbeat", self._heartbeat)
        app.router.add_post("/api/takeover", self._takeover)
        app.router.add_post("/api/unlink", self._unlink)
        app.router.add_get("/api/control", self._control_get)
        app.router.add_post("/api/control", self._control_set)
        app.router.add_get("/api/verify", self._verify)
        app.router.add_get("/api/config", self._config)
        app.router.add_get("/{name:[^/]+}", self._static)
        return app

    @staticmethod
    def _json(data: object, status: int = 200) -> web.Response:
        return web.json_response(data, status=status, headers=_NO_STORE)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any] | None:
        """The JSON object in the body ({} without a body); None when it is not one."""
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    def _file(name: str, extra: dict[str, str] | None = None,
              replace: tuple[str, str] | None = None) -> web.Response:
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
        body = path.read_bytes()
        if replace is not None:
            body = body.replace(replace[0].encode(), replace[1].encode())
        return web.Response(body=body, headers=headers)

    async def _index(self, request: web.Request) -> web.Response:
        return self._file("index.html",
                          replace=None if self._modules else (_MODULES_ON, _MODULES_OFF))

    async def _service_worker(self, request: web.Request) -> web.Response:
        return self._file("sw.js", {"Service-Worker-Allowed": "/"})

    async def _static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    def _qr_answer(self) -> web.Response:
        payload = self.current_payload
        return self._json({"payload": payload, "expires_in": round(self._expires_in(), 3),
                           "idle_after": self._qr_idle_after})

    async def _qr(self, request: web.Request) -> web.Response:
        return self._qr_answer()

    async def _qr_refresh(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body is None or not isinstance(body.get("expired"), str):
            return self._json({"error": 'body must be {"expired": "<payload>"}'}, 400)
        self.refresh_payload(body["expired"])
        return self._qr_answer()

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
        body = await self._body(request)
        if body is None:
            return self._json({"linked": False, "error": "body is not a JSON object"}, 400)
        payload, code = body.get("payload"), body.get("code")
        if payload is not None and code is not None:
            return self._json({"linked": False, "error": "give a payload or a code, not both"},
                              400)
        if code is not None:
            if not isinstance(code, str):
                return self._json({"linked": False, "error": "code must be a string"}, 400)
            if not self.link_code(code):
                return self._json({"linked": False,
                                   "error": "code is not a current pairing code"}, 409)
            return self._json({"linked": True, "code": normalize_code(code)})
        if payload is not None and not isinstance(payload, str):
            return self._json({"linked": False, "error": "payload must be a string"}, 400)
        current = self.current_payload
        if not self.link(payload):
            return self._json({"linked": False, "error": "payload is not the current QR code"},
                              409)
        return self._json({"linked": True, "payload": payload or current})

    async def _poll(self, request: web.Request) -> web.Response:
        payload = request.query.get("payload", "")
        approval = self._approved.get(payload)
        instance = request.query.get("instance", "")[:_MAX_ID_LEN]
        # The first page that asks takes the approval; another page that showed the same code
        # keeps waiting for a scan of its own. (A poll naming no page only looks.)
        if instance and approval is not None and \
                self._claims.setdefault(payload, instance) != instance:
            approval = None
        if approval is None:
            return self._json({"linked": False})
        return self._json({"linked": True, "token": approval.token,
                           "device_id": approval.device_id})

    async def _pairing_request(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body is None or not isinstance(body.get("phone"), str):
            return self._json({"error": 'body must be {"phone": "+4915550001"}'}, 400)
        ref = body.get("ref")
        try:
            pairing = self.request_pairing(body["phone"], ref if isinstance(ref, str) else None)
        except ValueError as exc:
            return self._json({"error": str(exc)}, 400)
        return self._json(pairing._asdict())

    async def _pairing_poll(self, request: web.Request) -> web.Response:
        pairing = self._pairings.get(request.query.get("ref", ""))
        if pairing is None:
            return self._json({"linked": False, "error": "unknown pairing request"}, 404)
        pairing.polled_at = time.monotonic()
        if pairing.approval is not None:
            return self._json({"linked": True, "token": pairing.approval.token,
                               "device_id": pairing.approval.device_id})
        expires_in = self._pairing_rotate - (time.monotonic() - pairing.code_at)
        return self._json({"linked": False, "code": self._pairing_code(pairing),
                           "expires_in": round(max(0.0, expires_in), 3)})

    async def _beat(self, request: web.Request, *, takeover: bool) -> web.Response:
        body = await self._body(request)
        instance = body.get("instance") if body is not None else None
        if not isinstance(instance, str) or not 0 < len(instance) <= _MAX_ID_LEN:
            return self._json({"error": 'body must be {"instance": "<id>", "device_id": ..., '
                                        '"token": ...}'}, 400)
        assert body is not None
        session = self._session(instance, body.get("device_id"), body.get("token"),
                                claim=takeover or body.get("claim") is True,
                                standby=body.get("standby") is True)
        return self._json({"session": session, "phone_online": self._phone_online,
                           "screen": self._screen})

    async def _heartbeat(self, request: web.Request) -> web.Response:
        return await self._beat(request, takeover=False)

    async def _takeover(self, request: web.Request) -> web.Response:
        return await self._beat(request, takeover=True)

    async def _unlink(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        device_id = body.get("device_id") if body is not None else None
        if body is None or (device_id is not None and not isinstance(device_id, str)):
            return self._json({"error": 'body must be {} or {"device_id": "<id>"}'}, 400)
        return self._json({"unlinked": self.unlink(device_id), "all": device_id is None})

    async def _control_get(self, request: web.Request) -> web.Response:
        return self._json(self._controls())

    async def _control_set(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if body is None or not set(body) <= {"phone_online", "screen", "modules"}:
            return self._json({"error": "body must be a JSON object with phone_online, screen "
                                        "and/or modules"}, 400)
        for key in ("phone_online", "modules"):
            if key in body and not isinstance(body[key], bool):
                return self._json({"error": f"{key} must be true or false"}, 400)
        screen = body.get("screen")
        if "screen" in body and screen is not None and (not isinstance(screen, str)
                                                        or screen not in SCREENS):
            return self._json({"error": f"screen must be one of {sorted(SCREENS)} or null"}, 400)
        if "phone_online" in body:
            self.set_phone_online(body["phone_online"])
        if "screen" in body:
            self.set_screen(screen)
        if "modules" in body:
            self.set_modules(body["modules"])
        return self._json(self._controls())

    async def _verify(self, request: web.Request) -> web.Response:
        token = request.query.get("token", "")
        device_id = request.query.get("device_id", "")
        valid = (bool(token and device_id) and verify_token(token, device_id)
                 and not self.is_revoked(device_id))
        return self._json({"valid": valid})

    async def _config(self, request: web.Request) -> web.Response:
        return self._json({"message_rate": self._message_rate, "history_kb": self._history_kb})
