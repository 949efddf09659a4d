"""A session's login state over time: what the driver reads, what it means, what to do.

Every reading (an Observation) comes here. A change of state is logged (`state_changed`, and
so the webhook and the page), each new QR or pairing code once. Some states call for action
in the daemon's own page (never a DevTools client's): an expired QR code is refreshed, a
conflict ("WhatsApp is open in another window") is taken over while the lease is held, a
pairing code is asked for. Some are judged by how long they last: connecting for longer than
SESSIONKEEPER_CONNECTING_DEGRADED_AFTER shows as degraded, and the page is reloaded after
SESSIONKEEPER_CONNECTING_RELOAD_AFTER; a screen nothing recognises for longer than
SESSIONKEEPER_UNKNOWN_AFTER is `unknown`. A logout (WhatsApp's event, post_logout=1, or a QR
code as the first screen after restoring a logged-in generation) marks the session's
logged-in generations logged out, so no later boot restores them. A fresh login is
checkpointed once WhatsApp has synced (or, read from the DOM, once it has settled).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from app.events import EventLog
from app.login_state import KNOWN, LoginState, Observation, label_of
from app.qr import log_qr
from app.settings import Settings
from app.targets.whatsapp import PAIRING_REFRESH_S

# At most this often: the same action in the same state (a refresh, a takeover).
ACTION_EVERY_S = 10.0
# A page that has just been opened or followed loads before it tells anything: a ready
# session stays ready through that much connecting (the checkpoint's relaunch, a client's tab).
PAGE_GRACE_S = 30.0


class WatchedSession(Protocol):
    """What the watch needs of its session."""

    @property
    def lease_held(self) -> bool:
        """True while this process holds the session's lease."""
        ...

    async def act(self, action: str, arg: str | None = None) -> str | None:
        """Do something in the driver's own page; None when it could not."""
        ...

    async def checkpoint(self) -> None:
        """Make a fresh login durable now."""

    async def mark_logged_out(self) -> list[int]:
        """Mark the session's logged-in generations logged out; which ones were."""
        ...

    async def ready_reached(self) -> None:
        """The session is ready (time the hand-over, once)."""

    def since_start_ms(self) -> int:
        """Milliseconds since the process started (the `ready` line carries it)."""
        ...

    async def restore_rejected(self, generation: int) -> None:
        """A restored logged-in generation asks for a QR code: raise RestoreRejected when an
        older logged-in generation is to be tried instead; return when none is left."""


class LoginWatch:
    """The login state of one session, and the bookkeeping around it."""

    def __init__(self, log: EventLog, settings: Settings, session: WatchedSession) -> None:
        self.log = log
        self.settings = settings
        self.session = session
        self._state = LoginState.STARTING
        self._degraded: set[str] = set()  # why: "database", "connecting"
        self._shown = self.shown_state()
        self.qr_payload: str | None = None
        self.pairing_code: str | None = None
        self.qr_serial = 0
        self.has_login_snapshot = False
        # A logged-in generation was just restored: if the first screen asks for a QR code,
        # the phone unlinked this device meanwhile.
        self.restored: int | None = None
        self._first_after_restore = False
        self.logged_in = False  # a login seen (or restored) since the last reset
        self._entered = time.monotonic()
        self._unrecognised_since: float | None = None
        self._ready_since: float | None = None
        self._probe_noted = False
        self._acted: dict[str, float] = {}
        self._pairing_at: float | None = None
        self._grace_until = 0.0
        # Called with the payload of the first QR code of a login (the demo's simulated phone).
        self.on_first_qr: Callable[[str], object] | None = None

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> LoginState:
        """The login state the driver reports (or the step before it)."""
        return self._state

    @state.setter
    def state(self, value: LoginState) -> None:
        if value is not self._state:
            self._entered = time.monotonic()
        self._state = value
        self._report()

    @property
    def degraded(self) -> bool:
        """True while something keeps the session from working: the database is away, or
        it has been connecting for too long."""
        return bool(self._degraded)

    def set_degraded(self, reason: str, on: bool) -> None:
        """Add or clear one reason for `degraded`."""
        if on:
            self._degraded.add(reason)
        else:
            self._degraded.discard(reason)
        self._report()

    def shown_state(self) -> str:
        """The state an operator sees: `degraded` wins over the login state."""
        return "degraded" if self._degraded else self._state.value

    def _report(self) -> None:
        shown = self.shown_state()
        if shown != self._shown:
            previous, self._shown = self._shown, shown
            self.log.info("state_changed", state=shown, previous=previous,
                          qr_available=self.qr_payload is not None,
                          pairing_code_available=self.pairing_code is not None,
                          degraded_by=sorted(self._degraded) or None)

    def label(self) -> str | None:
        """The label of a snapshot taken now (None: not known, none is taken). Right after a
        logged-in generation is restored nothing is known until the page shows more than
        connecting: its first screen may yet ask for a QR code (an unlink, a torn capture)."""
        return None if self._first_after_restore else label_of(self._state, self.logged_in)

    def reset(self, state: LoginState = LoginState.STARTING) -> None:
        """What held the profile went away: nothing is known until it is back."""
        self.qr_payload = self.pairing_code = None
        self._unrecognised_since = self._ready_since = None
        self.set_degraded("connecting", False)
        self.state = state

    def page_changed(self) -> None:
        """The driver reads another page now (its own, relaunched or reopened, or a client's):
        a ready session is not `connecting` while that page loads."""
        if self._state is LoginState.READY:
            self._grace_until = time.monotonic() + PAGE_GRACE_S

    def restored_generation(self, generation: int | None, label: str | None,
                            has_login_snapshot: bool) -> None:
        """A generation (labelled `label`) went into the profile; None: it started empty."""
        logged_in = generation is not None and label in (None, "ready")
        self.restored = generation if logged_in else None
        self._first_after_restore = logged_in
        self.logged_in = logged_in
        self.has_login_snapshot = has_login_snapshot

    # ------------------------------------------------------------------ readings

    async def observe(self, seen: Observation) -> None:
        """One reading of the driver's page (or profile)."""
        now = time.monotonic()
        self._note_probe(seen)
        state = seen.state
        if state is None:
            if self._unrecognised_since is None:
                self._unrecognised_since = now
            if now - self._unrecognised_since > self.settings.unknown_after:
                await self._unknown(seen, f"nothing recognised for "
                                          f"{self.settings.unknown_after:.0f} s")
            return
        self._unrecognised_since = None
        if state is LoginState.CONNECTING and now < self._grace_until:
            return  # the page just changed and is loading: still ready until it tells
        self._grace_until = 0.0
        seen_logout: str | None = "logout" if seen.logout else None
        if (state is LoginState.QR_REQUIRED and self._first_after_restore
                and self.restored is not None):
            if not seen.logout:
                # Maybe a torn capture rather than a logout: an older logged-in generation
                # is tried first (this raises RestoreRejected when one is).
                await self.session.restore_rejected(self.restored)
            state = LoginState.LOGGED_OUT  # unlinked from the phone while we were away
            seen_logout = "qr code after restoring a logged-in generation"
        if state is not LoginState.CONNECTING:  # loading comes first, whatever follows
            self._first_after_restore = False
        if state is LoginState.UNKNOWN:
            await self._unknown(seen, f"blocked: {seen.app_state}")
            return
        await self._codes(state, seen)
        if state is not self._state:
            await self._enter(state, seen, seen_logout)
        await self._dwell(state, seen, now)

    def _note_probe(self, seen: Observation) -> None:
        """Once: the site's own state could not be read although its page has loaded."""
        if self._probe_noted or seen.probe in (None, "ok") or seen.state is None:
            return
        self._probe_noted = True
        self.log.warning("target_probe_changed", probe=seen.probe, reason=seen.probe_reason,
                         url=seen.url, fallback="dom")

    async def _codes(self, state: LoginState, seen: Observation) -> None:
        """Log each new QR or pairing code; refresh an expired QR code; ask for a pairing
        code when a phone number is configured."""
        if state not in (LoginState.QR_REQUIRED, LoginState.LOGGED_OUT):
            self.qr_payload = self.pairing_code = None
            return
        fresh = self._state not in (LoginState.QR_REQUIRED, LoginState.LOGGED_OUT)
        if seen.qr_expired:
            # A dead code must not stay on the status page: ask for a new one.
            if self.qr_payload is not None:
                self.qr_payload = None
                self.qr_serial += 1
            if self.settings.pairing_phone is None and self._may("refresh_qr"):
                how = await self.session.act("refresh_qr")
                self.log.info("qr_refreshed", by=how, own_page=seen.own_page)
        elif seen.qr_payload is not None and (fresh or seen.qr_payload != self.qr_payload):
            self.qr_payload = seen.qr_payload
            self.qr_serial += 1
            log_qr(self.log, "qr_required" if fresh else "qr_rotated", seen.qr_payload,
                   self.settings.log_qr)
            if fresh and self.on_first_qr is not None:
                self.on_first_qr(seen.qr_payload)
        elif fresh and seen.qr_payload is None and seen.pairing_code is None:
            log_qr(self.log, "qr_required", None, self.settings.log_qr)
        await self._pairing(seen)

    async def _pairing(self, seen: Observation) -> None:
        code = seen.pairing_code.replace(",", "").replace("-", "") if seen.pairing_code \
            else None
        phone = self.settings.pairing_phone
        due = self._pairing_at is None or (
            time.monotonic() - self._pairing_at > PAIRING_REFRESH_S) or seen.qr_expired
        if phone is not None and due and seen.own_page and self._may("pairing_code", 3.0):
            asked = await self.session.act("pairing_code", phone.lstrip("+"))
            if asked:
                self._pairing_at = time.monotonic()
                code = asked.replace("-", "")
        if code and code != self.pairing_code:
            rotated = self.pairing_code is not None
            self.pairing_code = code
            self.qr_serial += 1
            fields: dict[str, Any] = {"rotated": rotated}
            if self.settings.log_qr:
                fields["code"] = f"{code[:4]}-{code[4:]}" if len(code) == 8 else code
            self.log.info("pairing_code", **fields)

    async def _enter(self, state: LoginState, seen: Observation, logout: str | None) -> None:
        previous = self._state
        if state is LoginState.READY:
            self.qr_payload = self.pairing_code = None  # a ready session offers no code
        self.state = state
        if state is not LoginState.CONNECTING:
            self.set_degraded("connecting", False)
        if state is LoginState.READY:
            self.logged_in = True
            self._ready_since = time.monotonic()
            self.log.info("ready", previous=previous.value, app_state=seen.app_state,
                          synced=seen.synced, since_start_ms=self.session.since_start_ms())
            await self.session.ready_reached()
            return
        self._ready_since = None
        if state is LoginState.CONFLICT:
            self.log.warning("conflict", app_state=seen.app_state, own_page=seen.own_page,
                             lease_held=self.session.lease_held)
            return
        if state in (LoginState.QR_REQUIRED, LoginState.LOGGED_OUT):
            # Whatever READY comes after a QR code or a logout is a fresh login to checkpoint.
            self.has_login_snapshot = self.logged_in = False
        if state is LoginState.LOGGED_OUT:
            await self._logged_out(previous, logout or "logged-out page", seen)

    async def _logged_out(self, previous: LoginState, reason: str, seen: Observation) -> None:
        marked = await self.session.mark_logged_out()
        self.log.warning("logged_out", previous=previous.value, reason=reason,
                         generation=self.restored, generations_marked=marked, url=seen.url)
        self.restored = None
        if seen.logout:
            await self.session.act("forget_logout")

    async def _dwell(self, state: LoginState, seen: Observation, now: float) -> None:
        """What a state calls for once it has lasted: a checkpoint after a settled login,
        degraded and a reload after a long connect, a takeover of a conflict."""
        lasted = now - self._entered
        if state is LoginState.READY and not self.has_login_snapshot:
            # WhatsApp's own state says when the keys are synced; the DOM cannot.
            settled = seen.synced is True or lasted >= self.settings.login_settle
            # Retried at most once a minute (while the database is away, say).
            if settled and self._may("checkpoint", 60.0):
                await self.session.checkpoint()
        elif state is LoginState.CONNECTING:
            if lasted > self.settings.connecting_degraded_after and \
                    "connecting" not in self._degraded:
                self.log.warning("connecting_too_long", seconds=round(lasted, 1),
                                 app_state=seen.app_state)
                self.set_degraded("connecting", True)
            if lasted > self.settings.connecting_reload_after and seen.own_page:
                how = await self.session.act("reload")
                self.log.warning("page_reloaded", reason="connecting", seconds=round(lasted, 1),
                                 app_state=seen.app_state, by=how)
                self._entered = now  # another full period before the next reload
        elif state is LoginState.CONFLICT:
            if not seen.own_page:
                return  # a client's tab: never take over from it
            if self.session.lease_held and self._may("take_over"):
                how = await self.session.act("take_over")
                self.log.info("conflict_taken_over", by=how)

    async def _unknown(self, seen: Observation, reason: str) -> None:
        self._unrecognised_since = None
        self.qr_payload = self.pairing_code = None
        if self._state is not LoginState.UNKNOWN:
            self.state = LoginState.UNKNOWN
            self.set_degraded("connecting", False)
            self.log.warning("target_unknown", reason=reason, app_state=seen.app_state,
                             title=seen.title, url=seen.url)

    def _may(self, action: str, every: float = ACTION_EVERY_S) -> bool:
        """Rate-limit an action: True at most once every `every` seconds."""
        now = time.monotonic()
        if now - self._acted.get(action, -1e9) < every:
            return False
        self._acted[action] = now
        return True

    def is_known(self) -> bool:
        """True once the driver has recognised a state."""
        return self._state in KNOWN

