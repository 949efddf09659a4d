"""What the browser keeps logged in: a URL and the selectors that tell its login state.

All site-specific knowledge lives here. The `custom` target takes any site from settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import ConfigError
from app.settings import Settings
from app.snapshot.local_storage import LoginKey, origin_of

# The localStorage items that mean "logged in", where no page can be read (`exec`, `import`).
# WhatsApp Web itself counts a session as logged in while `last-wid-md` is there.
WHATSAPP_LOGIN_KEY = "last-wid-md"
# The demo page keeps its device token there (app/demo/static/app.js, LS_TOKEN).
DEMO_LOGIN_KEY = "demo-token"


@dataclass(frozen=True)
class Target:
    """A page and how to read its login state from the DOM."""

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


# WhatsApp Web, as of 2025-2026. The QR canvas sits in a div whose data-ref is the payload;
# the chat list pane marks a logged-in session. Several alternatives each, because WhatsApp
# renames test ids and labels from time to time.
WHATSAPP = Target(
    name="whatsapp",
    url="https://web.whatsapp.com/",
    qr_selector=(
        "div[data-ref] canvas, canvas[aria-label='Scan this QR code to link a device!'], "
        "canvas[aria-label*='QR code' i], canvas[aria-label='Scan me!'], div[data-ref]"
    ),
    ready_selector=(
        "#pane-side, div[aria-label='Chat list'], div[aria-label='Chats'] [role='grid'], "
        "[data-testid='chat-list']"
    ),
    # WhatsApp has no stable logged-out element: after a logout (phone unlinked) it reloads
    # with ?post_logout=1 and shows the QR page again.
    logged_out_selector=None,
    logged_out_url="post_logout=1",
)
# Sources (checked 2026-11): whatsapp-web.js src/Client.js (div[data-ref] canvas, payload in
# data-ref; post_logout=1 for logouts), open-wa (canvas[aria-label='Scan me!']), and recent
# public selector notes (canvas[aria-label='Scan this QR code to link a device!'], #pane-side,
# div[aria-label='Chat list']). aria-labels are English: the browser runs with locale en-US.


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
    """The bundled demo site, served on loopback at url."""
    return Target(
        name="demo",
        url=url,
        qr_selector="[data-testid='qr-code']",
        ready_selector="[data-testid='chat-list']",
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
