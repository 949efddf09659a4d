"""The login state of a kept session, whoever reads it (a page, or the profile itself)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LoginState(StrEnum):
    """What the session looks like from outside."""

    STARTING = "starting"
    WAITING_FOR_LEASE = "waiting_for_lease"
    RESTORING = "restoring"
    # Loading, syncing, or the phone or network unreachable: logged in, not usable yet.
    CONNECTING = "connecting"
    QR_REQUIRED = "qr_required"
    READY = "ready"
    LOGGED_OUT = "logged_out"
    # Another window took the session over ("WhatsApp is open in another window").
    CONFLICT = "conflict"
    # A screen no login gets past (an outdated browser, a ban) or one nothing recognises.
    UNKNOWN = "unknown"


# The states a driver has recognised (the rest are steps of the lifecycle before them).
KNOWN = frozenset({LoginState.READY, LoginState.QR_REQUIRED, LoginState.LOGGED_OUT,
                   LoginState.CONNECTING, LoginState.CONFLICT, LoginState.UNKNOWN})


@dataclass(frozen=True, slots=True)
class Observation:
    """One reading of the page: the state (None: nothing recognised), and what came with it."""

    state: LoginState | None
    qr_payload: str | None = None
    # The site's own state name (WhatsApp's Socket.state), when it could be read.
    app_state: str | None = None
    # WhatsApp's hasSynced; None when the state came from the DOM.
    synced: bool | None = None
    # The QR code expired (UNPAIRED_IDLE, or its reload control is up).
    qr_expired: bool = False
    pairing_code: str | None = None
    # A logout was seen: WhatsApp's logout event, or post_logout=1 in the URL.
    logout: bool = False
    # How the site's own state read: "ok", "absent" (not loaded), "changed", None (not asked).
    probe: str | None = None
    probe_reason: str | None = None
    url: str | None = None
    title: str | None = None
    # False while the page read belongs to an attached DevTools client.
    own_page: bool = True


def label_of(state: LoginState, logged_in: bool = False) -> str | None:
    """The label a snapshot taken in this state carries: 'ready', 'qr', or None (not known:
    no snapshot is taken). Connecting or in conflict, a session that was logged in still is."""
    if state is LoginState.READY:
        return "ready"
    if state in (LoginState.QR_REQUIRED, LoginState.LOGGED_OUT):
        return "qr"
    if state in (LoginState.CONNECTING, LoginState.CONFLICT) and logged_in:
        return "ready"
    return None
