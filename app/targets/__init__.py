"""What the browser keeps logged in: a URL, and how to read its login state.

Site knowledge lives in this package: WhatsApp's in `whatsapp.py` (state names, selectors,
the in-page probe and actions, with their sources); the demo site mimics WhatsApp and is
read the same way; the `custom` target takes any site's selectors from settings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from app.errors import ConfigError
from app.login_state import LoginState, Observation
from app.settings import Settings
from app.snapshot.local_storage import LoginKey, origin_of
from app.targets import whatsapp

# The localStorage items that mean "logged in", where no page can be read (`exec`, `import`).
# WhatsApp Web itself counts a session as logged in while `last-wid-md` is there.
WHATSAPP_LOGIN_KEY = "last-wid-md"
# The demo page keeps its device token there (app/demo/static/app.js, LS_TOKEN).
DEMO_LOGIN_KEY = "demo-token"


@dataclass(frozen=True)
class Target:
    """A page and how to read its login state: the site's own state where it has one
    (WhatsApp's socket model), else the DOM."""

    name: str
    url: str
    qr_selector: str
    ready_selector: str
    logged_out_selector: str | None = None
    # The QR payload sits in this attribute of the QR element or an ancestor (WhatsApp: the
    # `data-ref` of the div around its canvas); without it, the element's text is used.
    qr_attribute: str = "data-ref"
    # A URL fragment that marks a QR page shown after a logout (WhatsApp: post_logout=1).
    logged_out_url: str | None = None
    # The reload control of an expired QR code, the text of the "take over" button of a
    # conflict dialog, and where a pairing code is shown (WhatsApp; None elsewhere).
    qr_reload_selector: str | None = None
    conflict_text: str | None = None
    pairing_code_selector: str | None = None
    # Read WhatsApp's own connection state (window.require('WAWebSocketModel')).
    app_state: bool = False

    def probe_args(self) -> list[object]:
        """The arguments of whatsapp.PROBE_JS for this target."""
        return [self.qr_selector, self.ready_selector, self.logged_out_selector,
                self.qr_attribute, self.logged_out_url, self.qr_reload_selector,
                self.conflict_text, self.pairing_code_selector, self.app_state]


WHATSAPP = Target(
    name="whatsapp",
    url=whatsapp.URL,
    qr_selector=whatsapp.QR_SELECTOR,
    ready_selector=whatsapp.READY_SELECTOR,
    logged_out_selector=None,
    logged_out_url=whatsapp.LOGGED_OUT_URL,
    qr_reload_selector=whatsapp.QR_RELOAD_SELECTOR,
    conflict_text=whatsapp.CONFLICT_BUTTON_TEXT,
    pairing_code_selector=whatsapp.PAIRING_CODE_SELECTOR,
    app_state=True,
)


def read_page(target: Target, found: dict[str, Any], own_page: bool = True) -> Observation:
    """What one PROBE_JS reading says: WhatsApp's own state when it could be read, else the
    DOM's answer."""
    app = found.get("app") or {}
    probe = app.get("status") if target.app_state else None
    common: dict[str, Any] = {
        "qr_payload": found.get("payload"), "pairing_code": found.get("code") or None,
        "logout": bool(found.get("logout")), "probe": probe, "probe_reason": app.get("reason"),
        "url": found.get("url"), "title": found.get("title"), "own_page": own_page,
    }
    if probe == "ok":
        raw = str(app.get("state"))
        synced = bool(app.get("synced"))
        state = _app_state(raw, synced)
        if state is LoginState.QR_REQUIRED and common["logout"]:
            state = LoginState.LOGGED_OUT
        return Observation(state, app_state=raw, synced=synced,
                           qr_expired=raw == whatsapp.UNPAIRED_IDLE, **common)
    dom = {"ready": LoginState.READY, "qr": LoginState.QR_REQUIRED,
           "logged_out": LoginState.LOGGED_OUT, "conflict": LoginState.CONFLICT}.get(
               str(found.get("dom")))
    if dom is LoginState.QR_REQUIRED and common["logout"]:
        dom = LoginState.LOGGED_OUT
    return Observation(dom, qr_expired=bool(found.get("idle")), **common)


def _app_state(raw: str, synced: bool) -> LoginState | None:
    if raw == whatsapp.CONNECTED:
        return LoginState.READY if synced else LoginState.CONNECTING
    if raw in whatsapp.CONNECTING:
        return LoginState.CONNECTING
    if raw in (whatsapp.UNPAIRED, whatsapp.UNPAIRED_IDLE):
        return LoginState.QR_REQUIRED
    if raw == whatsapp.CONFLICT:
        return LoginState.CONFLICT
    if raw in whatsapp.BLOCKED:
        return LoginState.UNKNOWN
    return None  # a state nobody knows yet: the unknown-screen timer decides


def demo_url(settings: Settings) -> str:
    """Where the bundled demo site is served (loopback, SESSIONKEEPER_DEMO_PORT)."""
    return f"http://127.0.0.1:{settings.demo_port}/"


def login_key_for(settings: Settings) -> LoginKey | None:
    """The configured target's login key; None for a custom target without one (its
    captures are then unlabelled)."""
    if settings.target == "whatsapp":
        return LoginKey(origin_of(WHATSAPP.url), settings.login_key or WHATSAPP_LOGIN_KEY)
    if settings.target == "demo":
        return LoginKey(origin_of(demo_url(settings)), settings.login_key or DEMO_LOGIN_KEY)
    if settings.login_key is None:
        return None
    if not settings.target_url:
        raise ConfigError("SESSIONKEEPER_LOGIN_KEY with SESSIONKEEPER_TARGET=custom needs "
                          "SESSIONKEEPER_TARGET_URL (the key is read on its origin)")
    return LoginKey(origin_of(settings.target_url), settings.login_key)


def demo_target(url: str) -> Target:
    """The bundled demo site, served on loopback at url. It shows WhatsApp's screens, module
    and DOM, so it is read as WhatsApp is (plus its own test ids and logged-out notice)."""
    return replace(
        WHATSAPP, name="demo", url=url,
        qr_selector=f"{WHATSAPP.qr_selector}, [data-testid='qr-code']",
        logged_out_selector="[data-testid='logged-out']",
    )


def custom_target(settings: Settings) -> Target:
    """The `custom` target from SESSIONKEEPER_TARGET_URL and the selector settings."""
    missing = [name for name, value in (
        ("SESSIONKEEPER_TARGET_URL", settings.target_url),
        ("SESSIONKEEPER_QR_SELECTOR", settings.qr_selector),
        ("SESSIONKEEPER_READY_SELECTOR", settings.ready_selector),
    ) if not value]
    if missing:
        raise ConfigError(
            f"SESSIONKEEPER_TARGET=custom needs {', '.join(missing)}"
        )
    assert settings.target_url and settings.qr_selector and settings.ready_selector
    return Target(
        name="custom",
        url=settings.target_url,
        qr_selector=settings.qr_selector,
        ready_selector=settings.ready_selector,
        logged_out_selector=settings.logged_out_selector or None,
        qr_attribute=settings.qr_attribute,
    )
