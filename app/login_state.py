"""The login state of a kept session, whoever reads it (a page, or the profile itself)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LoginState(StrEnum):
    """What the session looks like from outside."""

    STARTING = "starting"
    WAITING_FOR_LEASE = "waiting_for_lease"
    RESTORING = "restoring"
    QR_REQUIRED = "qr_required"
    READY = "ready"
    LOGGED_OUT = "logged_out"


# The states a driver has recognised (the rest are steps of the lifecycle before them).
KNOWN = frozenset({LoginState.READY, LoginState.QR_REQUIRED, LoginState.LOGGED_OUT})


@dataclass(frozen=True, slots=True)
class Observation:
    """One reading of the login state (None: not recognisable yet) and the QR payload."""

    state: LoginState | None
    qr_payload: str | None = None


def label_of(state: LoginState) -> str | None:
    """The label a snapshot taken in this state carries: 'ready', 'qr', or None (not known:
    no snapshot is taken)."""
    if state is LoginState.READY:
        return "ready"
    if state in (LoginState.QR_REQUIRED, LoginState.LOGGED_OUT):
        return "qr"
    return None
