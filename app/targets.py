"""What the browser keeps logged in: a URL and the selectors that tell its login state.

All site-specific knowledge lives here. The `custom` target takes any site from settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import ConfigError
from app.settings import Settings


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


# WhatsApp Web, as of 2025-2026. The QR canvas sits in a div whose data-ref is the payload;
# the chat list pane marks a logged-in session. Several alternatives each, because WhatsApp
# renames test ids and labels from time to time.
WHATSAPP = Target(
    name="whatsapp",
    url="https://web.whatsapp.com/",
    qr_selector=(
        "div[data-ref] canvas, canvas[aria-label*='QR' i], canvas[aria-label='Scan me!'], "
        "div[data-ref]"
    ),
    ready_selector=(
        "#pane-side, [data-testid='chat-list'], div[aria-label='Chat list'], "
        "div[aria-label='Chats'] [role='grid'], [data-icon='new-chat-outline'], "
        "[data-icon='chat']"
    ),
    logged_out_selector=(
        "[data-testid='intro-md-beta-logo-light'], [data-testid='logout-confirm'], "
        "div[data-animate-modal-popup='true'] [data-testid='popup-contents']"
    ),
)


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
