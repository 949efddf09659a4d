"""LoginWatch's rules on their own, fed readings directly.

The session it reports to is a recording double (named as such): the end-to-end tests in
test_whatsapp_screens.py drive the same rules through a real Chromium and database.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.drivers.chromium import CONNECTING_QUICKLY_S, OBSERVE_EVERY, OBSERVE_FIRST, observe_delay
from app.events import EventLog
from app.login_state import LoginState, Observation
from app.login_watch import LoginWatch
from app.metrics import Metrics
from app.settings import Settings


class RecordingSession:
    """Test double of the session: records what the watch asks of it."""

    def __init__(self, lease_held: bool = True) -> None:
        self.lease_held = lease_held
        self.actions: list[tuple[str, str | None]] = []
        self.checkpoints = 0
        self.marked: list[int] = [3, 4]
        self.marks = 0
        self.rejected: list[int] = []

    async def act(self, action: str, arg: str | None = None) -> str | None:
        self.actions.append((action, arg))
        return {"pairing_code": "K7QD9XWF"}.get(action, "command")

    async def checkpoint(self) -> None:
        self.checkpoints += 1

    async def mark_logged_out(self) -> list[int]:
        self.marks += 1
        return self.marked

    async def ready_reached(self) -> None:
        pass

    def since_start_ms(self) -> int:
        return 1234

    async def restore_rejected(self, generation: int) -> None:
        self.rejected.append(generation)  # no older generation to try: the watch goes on


class Lines:
    """A structlog-like logger keeping (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [f for _, e, f in self.lines if e == name]


def make(**settings: Any) -> tuple[LoginWatch, RecordingSession, Lines]:
    lines = Lines()
    session = RecordingSession()
    log = EventLog(lines, "s", "me", Metrics(), None)
    # The codes are logged here as with SESSIONKEEPER_LOG_QR=true (pytest's stdout is no TTY).
    watch = LoginWatch(log, Settings(**{"log_qr": True, **settings}), session)
    return watch, session, lines


def wa(state: str, synced: bool = True, **extra: Any) -> Observation:
    """A reading of WhatsApp's own state, as read_page makes it."""
    from app.targets import WHATSAPP, read_page

    found = {"app": {"status": "ok", "state": state, "synced": synced}, "dom": "unknown",
             "url": "https://web.whatsapp.com/", "title": "WhatsApp", **extra}
    return read_page(WHATSAPP, found, own_page=extra.pop("own_page", True))


@pytest.mark.anyio
async def test_a_qr_code_as_the_first_screen_after_a_restored_login_is_a_logout() -> None:
    watch, session, lines = make()
    watch.restored_generation(7, "ready", has_login_snapshot=True)
    await watch.observe(wa("OPENING"))  # loading comes first and decides nothing
    assert watch.state is LoginState.CONNECTING and not lines.events("logged_out")
    # Nor is a snapshot taken meanwhile: labelled logged in, it would outlive the logout.
    assert watch.label() is None
    await watch.observe(wa("UNPAIRED", payload="2@abc"))
    # An older logged-in generation is asked for first (self-healing restore); none is left.
    assert session.rejected == [7]
    assert watch.state is LoginState.LOGGED_OUT and session.marks == 1
    out = lines.events("logged_out")[0]
    assert out["generation"] == 7 and out["generations_marked"] == [3, 4]
    assert out["reason"] == "qr code after restoring a logged-in generation"
    assert watch.label() == "qr" and not watch.has_login_snapshot


@pytest.mark.anyio
async def test_a_restored_login_that_comes_up_ready_is_no_logout() -> None:
    watch, session, _ = make()
    watch.restored_generation(7, "ready", has_login_snapshot=True)
    await watch.observe(wa("CONNECTED", synced=False))
    assert watch.state is LoginState.CONNECTING and watch.label() is None  # not decided yet
    await watch.observe(wa("CONNECTED"))
    assert watch.state is LoginState.READY and watch.label() == "ready"
    await watch.observe(wa("CONNECTED", synced=False))  # connecting again, once logged in
    assert watch.state is LoginState.CONNECTING and watch.label() == "ready"
    await watch.observe(wa("UNPAIRED", payload="2@abc"))  # later: a plain QR page
    assert watch.state is LoginState.QR_REQUIRED and session.marks == 0
    assert session.checkpoints == 0  # the restored login needs no checkpoint


@pytest.mark.anyio
async def test_a_fresh_login_is_checkpointed_once_synced() -> None:
    watch, session, _ = make()
    watch.restored_generation(None, None, has_login_snapshot=False)
    await watch.observe(wa("UNPAIRED", payload="2@abc"))
    await watch.observe(wa("CONNECTED", synced=False))
    assert session.checkpoints == 0 and watch.state is LoginState.CONNECTING
    await watch.observe(wa("CONNECTED", synced=True))
    assert session.checkpoints == 1 and watch.state is LoginState.READY


@pytest.mark.anyio
async def test_conflict_is_taken_over_only_in_our_page_with_the_lease() -> None:
    watch, session, _ = make()
    await watch.observe(wa("CONFLICT", own_page=False))  # a DevTools client's tab
    assert watch.state is LoginState.CONFLICT and session.actions == []
    watch2, session2, _ = make()
    session2.lease_held = False
    await watch2.observe(wa("CONFLICT"))
    assert session2.actions == []
    watch3, session3, lines3 = make()
    await watch3.observe(wa("CONFLICT"))
    assert session3.actions == [("take_over", None)]
    assert lines3.events("conflict_taken_over")[0]["by"] == "command"


@pytest.mark.anyio
async def test_blocked_is_unknown_at_once_and_an_unknown_state_after_the_setting() -> None:
    watch, _, lines = make(unknown_after=0.05)
    await watch.observe(wa("TOS_BLOCK"))
    assert watch.state is LoginState.UNKNOWN and watch.label() is None
    assert lines.events("target_unknown")[0]["app_state"] == "TOS_BLOCK"
    watch2, _, lines2 = make(unknown_after=0.05)
    await watch2.observe(wa("SOMETHING_NEW"))
    assert watch2.state is LoginState.STARTING  # not yet
    await asyncio.sleep(0.1)
    await watch2.observe(wa("SOMETHING_NEW"))
    assert watch2.state is LoginState.UNKNOWN
    assert lines2.events("target_unknown")[0]["app_state"] == "SOMETHING_NEW"


@pytest.mark.anyio
async def test_an_expired_code_leaves_the_page_and_is_refreshed() -> None:
    watch, session, lines = make()
    await watch.observe(wa("UNPAIRED", payload="2@first"))
    assert watch.qr_payload == "2@first"
    await watch.observe(wa("UNPAIRED_IDLE", payload="2@first"))
    assert watch.qr_payload is None  # never shown once dead
    assert session.actions == [("refresh_qr", None)]
    await watch.observe(wa("UNPAIRED", payload="2@second"))
    assert watch.qr_payload == "2@second" and lines.events("qr_rotated")


@pytest.mark.anyio
async def test_a_pairing_code_is_asked_for_and_logged() -> None:
    watch, session, lines = make(pairing_phone="+4915550001")
    await watch.observe(wa("UNPAIRED"))
    assert session.actions == [("pairing_code", "4915550001")]
    assert watch.pairing_code == "K7QD9XWF"
    assert lines.events("pairing_code")[0] == {"rotated": False, "code": "K7QD-9XWF"}
    await watch.observe(wa("UNPAIRED", code="A,B,C,D,E,F,G,H"))  # WhatsApp rotated it
    assert watch.pairing_code == "ABCDEFGH"
    assert lines.events("pairing_code")[1]["rotated"] is True


@pytest.mark.anyio
async def test_a_changed_probe_is_noted_once() -> None:
    from app.targets import WHATSAPP, read_page

    watch, _, lines = make()
    for _ in range(3):
        await watch.observe(read_page(WHATSAPP, {
            "app": {"status": "changed", "reason": 'Requiring unknown module "X"'},
            "dom": "qr", "payload": "2@abc"}))
    assert watch.state is LoginState.QR_REQUIRED
    noted = lines.events("target_probe_changed")
    assert len(noted) == 1 and noted[0]["fallback"] == "dom"


@pytest.mark.anyio
async def test_a_ready_session_stays_ready_while_a_new_page_loads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import app.login_watch as login_watch

    monkeypatch.setattr(login_watch, "PAGE_GRACE_S", 0.05)
    watch, _, lines = make()
    await watch.observe(wa("CONNECTED"))
    watch.page_changed()  # a client's tab followed, or our page relaunched
    await watch.observe(wa("OPENING"))
    assert watch.state is LoginState.READY
    await asyncio.sleep(0.1)
    await watch.observe(wa("OPENING"))  # still loading after the grace: it says so
    assert watch.state is LoginState.CONNECTING
    assert [f["state"] for f in lines.events("state_changed")] == ["ready", "connecting"]


def test_a_fresh_page_that_connects_is_read_quickly() -> None:
    """A restored session's page says `connecting` for a moment before `ready`: read it every
    tenth of a second then (the `ready` line follows the page's own), not forever after."""
    assert observe_delay(LoginState.STARTING, 0.0) == OBSERVE_FIRST
    assert observe_delay(LoginState.CONNECTING, 1.0) == OBSERVE_FIRST
    assert observe_delay(LoginState.CONNECTING, CONNECTING_QUICKLY_S + 1) == OBSERVE_EVERY
    assert observe_delay(LoginState.READY, 1.0) == OBSERVE_EVERY
    assert observe_delay(LoginState.QR_REQUIRED, 1.0) == OBSERVE_EVERY
