"""One kept session, read top to bottom: boot -> own -> restore -> drive -> snapshot -> shutdown.

The lifecycle is the same whatever holds the profile (app/drivers): our own Chromium (`run`)
or a bot's process with a Chromium of its own (`exec`). It connects to PostgreSQL (waiting while
it is away), takes the session's lease (waiting while another process holds it), restores the
newest logged-in generation into the profile directory, starts the driver and keeps the login
state it reports. Every snapshot carries the lease's fencing token; a lost lease stops the
driver without a write, and the session waits for the lease again. A periodic loop snapshots
the live profile; right after a fresh login a checkpoint makes the login durable at once (our
Chromium is closed for it, so cookies and localStorage reach the disk rather than 5-30 s
later). At shutdown the driver stops (Chromium closes and writes what it holds; a child gets
the signal), a final snapshot is taken shielded from cancellation and bounded by
SESSIONKEEPER_SHUTDOWN_TIMEOUT, and the lease is released for the next owner.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from app.browser import DevTools, remove_singletons
from app.drivers.base import Driver
from app.errors import (
    CaptureInvalid,
    CorruptSnapshot,
    LeaseLost,
    NotFound,
    RestoreRejected,
    SessionRemoved,
)
from app.events import EventLog
from app.failures import DB_ERRORS, innermost, is_database_error, reason_of, retrying
from app.log import bind_session, get_logger
from app.login_state import LoginState, Observation
from app.login_watch import LoginWatch
from app.metrics import Metrics
from app.settings import Settings
from app.snapshot_schedule import next_wait
from app.status import SessionFacts, SnapshotFacts
from app.store import leases, repo
from app.store.db import bounded, open_pool
from app.store.schema import SchemaNotReady
from app.vault.local_marker import LocalMarker, profile_has_files
from app.vault.options import VaultOptions
from app.vault.restore import restore_order, restore_profile
from app.vault.save import Label, LabelFn, SaveResult, save_snapshot

if TYPE_CHECKING:
    from app.webhook import Webhook  # aiohttp: loaded only when a webhook is set

# Of SESSIONKEEPER_SHUTDOWN_TIMEOUT, what a child may take to exit before it is killed leaves
# this much (at most 10 s) for the final snapshot.
FINAL_SNAPSHOT_SHARE = 0.4
FINAL_SNAPSHOT_MAX_S = 10.0
# The longest a lost lease waits for the driver to stop (Chromium closing, a child's exit).
ABANDON_TIMEOUT_S = 10.0
# Beyond its budget, what a driver's stop is given before it is left behind.
DRIVER_STOP_GRACE_S = 3.0


def close_reserve(timeout: float) -> float:
    """Of the shutdown timeout, what is kept for closing the pool, the webhook and the HTTP
    server after the sessions have shut down."""
    return min(2.0, timeout * 0.1)


class SessionRunner:
    """Keeps one session: its lease, its driver, its snapshots, its state."""

    def __init__(self, settings: Settings, driver: Driver, started: float,
                 metrics: Metrics | None = None, webhook: Webhook | None = None) -> None:
        self.settings = settings
        self.session_id = settings.session_id
        self.profile = settings.profile_dir.absolute()
        self.driver = driver
        self.options = VaultOptions.from_settings(settings)
        self.owner = leases.owner_id()
        self.metrics = metrics or Metrics()
        # Warnings and errors are counted; state changes and failed snapshots go to the webhook.
        self.log = EventLog(get_logger(session_id=self.session_id), self.session_id,
                            self.owner, self.metrics, webhook)
        self.started = started
        self.pool: asyncpg.Pool | None = None
        # The login state and its bookkeeping (QR and pairing codes, timers, actions).
        self.watch = LoginWatch(self.log, settings, self)
        self.last_snapshot: SnapshotFacts | None = None
        self.generations_kept: int | None = None
        self._snapshot_lock = anyio.Lock()
        # Draws the periodic snapshots' jitter; seeded from the OS, so replicas differ.
        self._schedule_rng = random.Random()  # noqa: S311 (timing, not a secret)
        self.lease_token: int | None = None
        # Monotonic time by which the driver stops unless a renewal gets through.
        self.lease_deadline = 0.0
        # The profile on disk was kept at the last restore (newer than the database).
        self.local_kept = False
        # Self-healing restores done since this process started (restore_rejected).
        self.fallbacks_used = 0
        self.other_holder: str | None = None  # who holds the lease while this one waits
        # Claim mode: the lease was claimed for this runner; when it is lost or the session is
        # removed, the runner ends instead of waiting (the claim loop decides what runs).
        self.claimed = False
        # The driver's own end (a child that exited): its exit code; serve() returns.
        self.ended: int | None = None

    # ------------------------------------------------------------------ facts

    @property
    def state(self) -> LoginState:
        """The login state the driver reports (or the step before it)."""
        return self.watch.state

    @state.setter
    def state(self, value: LoginState) -> None:
        self.watch.state = value

    @property
    def degraded(self) -> bool:
        """True while the database is away, or the target has been connecting too long (the
        browser keeps running)."""
        return self.watch.degraded

    @degraded.setter
    def degraded(self, value: bool) -> None:
        self.watch.set_degraded("database", value)

    @property
    def qr_payload(self) -> str | None:
        """The QR code the session shows now (None: no login needed, or it expired)."""
        return self.watch.qr_payload

    @property
    def pairing_code(self) -> str | None:
        """The pairing code to enter on the phone, while one is shown."""
        return self.watch.pairing_code

    @property
    def lease_held(self) -> bool:
        """True while this process holds the session's lease."""
        return self.lease_token is not None

    def shown_state(self) -> str:
        """The state an operator sees: `degraded` wins over the login state."""
        return self.watch.shown_state()

    def facts(self) -> SessionFacts:
        """What the status page, /api/sessions and /metrics show."""
        return SessionFacts(
            session_id=self.session_id, state=self.shown_state(), run_here=True,
            ready=self.state is LoginState.READY and not self.degraded,
            degraded=self.degraded, qr_available=self.qr_payload is not None,
            pairing_code_available=self.pairing_code is not None,
            qr_serial=self.watch.qr_serial,
            lease_holder=self.owner if self.lease_token is not None else self.other_holder,
            lease_held=self.lease_token is not None, fencing_token=self.lease_token,
            last_snapshot=self.last_snapshot, generations_kept=self.generations_kept)

    def status(self) -> dict[str, Any]:
        """What /readyz reports."""
        facts = self.facts().as_json()
        return {
            "session_id": self.session_id, "state": self.state.value,
            "ready": facts["ready"], "degraded": self.degraded,
            "qr_available": facts["qr_available"],
            "pairing_code_available": facts["pairing_code_available"],
            "last_snapshot": facts["last_snapshot"],
        }

    @property
    def devtools(self) -> DevTools | None:
        """The session's Chromium DevTools endpoint while it runs (CDP on, `run` only)."""
        return self.driver.devtools

    def since_start_ms(self) -> int:
        """Milliseconds since the process started."""
        return int((time.monotonic() - self.started) * 1000)

    def reset_login(self) -> None:
        """What held the profile went away: the login state is unknown until it is back."""
        self.watch.reset()

    def page_changed(self) -> None:
        """The driver reads another page now; it loads before it tells anything."""
        self.watch.page_changed()

    # ------------------------------------------------------------------ boot

    async def boot(self, stack: AsyncExitStack) -> None:
        """Connect, waiting for the database while it is away."""
        self.state = LoginState.STARTING
        async for attempt in retrying(self.log, "database_unavailable"):
            with attempt:
                try:
                    self.pool = await stack.enter_async_context(open_pool(self.settings))
                except DB_ERRORS:
                    self.degraded = True
                    raise
        self.degraded = False

    async def serve(self) -> None:
        """Own the session and keep it, for as long as the lease holds; when it is lost, stop
        the driver without writing and wait for the lease again. Returns when the driver ended
        by itself (`ended` holds its exit code), or the session was removed (claim mode)."""
        while True:
            if self.lease_token is None:
                if self.claimed:
                    return
                await self.acquire_lease()
            self.state = LoginState.RESTORING
            try:
                async with anyio.create_task_group() as tg:
                    # Renew from the start: a slow restore must not let the lease run out.
                    tg.start_soon(self.keep_lease)
                    tg.start_soon(self.lease_watchdog)
                    async for attempt in retrying(self.log, "database_unavailable"):
                        with attempt:
                            await self.restore()
                    tg.start_soon(self.drive, tg.cancel_scope)
                    tg.start_soon(self.snapshot_loop)
            except* LeaseLost as group:
                await self.driver.abandon()  # no snapshot: the session is someone else's now
                self.log.error("lease_lost", fencing_token=self.lease_token,
                               reason=str(group.exceptions[0])[:300])
                self.lease_token = None
                self.reset_login()
            except* RestoreRejected:
                # The lease stays ours: restore the previous logged-in generation and go on.
                with anyio.move_on_after(ABANDON_TIMEOUT_S):
                    await self.driver.abandon()
                LocalMarker.clear(self.profile, self.session_id)
                self.reset_login()
            except* SessionRemoved:
                self.log.info("session_removed")
                await self.shutdown()  # final snapshot, then the lease goes back
                self.lease_token = None
                self.claimed = True  # removed: end here rather than wait for the lease
            if self.ended is not None:
                return

    async def acquire_lease(self) -> None:
        """Wait until this process holds the session's lease (polling while another does)."""
        assert self.pool is not None
        ttl = self.settings.lease_ttl
        waited = time.monotonic()
        last_holder: str | None = None
        while True:
            # Short waits: the session is down until the lease is back (a few seconds after
            # the database, not a backoff of half a minute).
            async for attempt in retrying(self.log, "database_unavailable",
                                          max_wait=min(5.0, ttl / 3)):
                with attempt:
                    sent = time.monotonic()
                    async with bounded(self.pool, self.lease_query_timeout) as conn:
                        token = await leases.try_acquire(
                            conn, self.session_id, self.owner, ttl,
                            leases.handover_within(self.settings.shutdown_timeout))
                        held = None if token else await leases.holder(conn, self.session_id)
            if token is not None:
                break
            assert held is not None
            self.other_holder = held.owner
            self.state = LoginState.WAITING_FOR_LEASE
            if held.owner != last_holder:
                last_holder = held.owner
                self.log.info("waiting_for_lease", holder=held.owner,
                              expires_in_s=round(held.expires_in_s or 0, 1))
            await anyio.sleep(min(0.5, ttl / 3))
        self.took_lease(token, sent)
        self.log.info("lease_acquired", fencing_token=token, owner=self.owner,
                      waited_ms=int((time.monotonic() - waited) * 1000))

    def took_lease(self, token: int, sent: float) -> None:
        """This process holds the lease now (acquired here, or claimed by the claim loop):
        it runs for a TTL from `sent`, when the query that took it was sent."""
        self.lease_token, self.other_holder = token, None
        self.lease_deadline = sent + self.settings.lease_ttl - self.lease_margin

    @property
    def lease_margin(self) -> float:
        """How long before the lease's end (counted from when a renewal was sent) the driver
        stops: clocks drift, and the next owner may take the lease the moment it ends."""
        return min(self.settings.lease_ttl / 10, 2.0)

    @property
    def lease_query_timeout(self) -> float:
        """The longest a lease query may take (a third of the TTL: one renewal period)."""
        return min(self.settings.lease_ttl / 3, self.settings.db_command_timeout)

    async def keep_lease(self) -> None:
        """Renew every third of the TTL, each renewal bounded (a half-open connection must not
        block it); LeaseLost when another owner took it. Each renewal that gets through moves
        the deadline that lease_watchdog enforces."""
        assert self.pool is not None and self.lease_token is not None
        ttl = self.settings.lease_ttl
        while True:
            await anyio.sleep(ttl / 3)
            sent = time.monotonic()
            try:
                async with bounded(self.pool, self.lease_query_timeout) as conn:
                    ok = await leases.renew(conn, self.session_id, self.owner,
                                            self.lease_token, ttl)
            except DB_ERRORS as exc:
                self.degraded = True
                self.log.warning("lease_renewal_failed", reason=reason_of(exc))
                continue
            if ok is False:
                raise LeaseLost("another process took the lease")
            # The lease runs from when the renewal was sent, not from when its answer came.
            self.lease_deadline = sent + ttl - self.lease_margin
            self.degraded = False  # the database answers again (not only at the next snapshot)
            if self.claimed and not await self._still_registered():
                raise SessionRemoved(self.session_id)

    async def lease_watchdog(self) -> None:
        """An independent timer: at the lease's deadline with no renewal confirmed, stop the
        driver at once (whatever the other tasks are stuck in) and raise LeaseLost. Two
        Chromiums must never run one identity."""
        while True:
            left = self.lease_deadline - time.monotonic()
            if left <= 0:
                break
            await anyio.sleep(left)
        with anyio.CancelScope(shield=True), anyio.move_on_after(ABANDON_TIMEOUT_S):
            await self.driver.abandon()
        raise LeaseLost(f"no renewal confirmed within {self.settings.lease_ttl:.0f} s")

    async def restore(self) -> None:
        """The newest good generation into the profile directory, unless the profile on disk
        is at least as new (see LocalMarker); an empty profile if there is none."""
        assert self.pool is not None and self.lease_token is not None
        self.local_kept = False
        restored: tuple[int | None, str | None] = (None, None)
        kept = await self._keep_local()
        if kept is not None:
            restored = kept
        else:
            try:
                result = await restore_profile(self.pool, self.session_id, self.profile,
                                               rules=self.options.rules)
                self.log.info("session_restored", generation=result.generation,
                              files=result.files, bytes_raw=result.bytes_raw,
                              bytes=result.bytes_raw,  # deprecated name, kept one release
                              duration_ms=result.duration_ms, login_state=result.login_state)
                self.metrics.restored(self.session_id, result.duration_ms)
                restored = (result.generation, result.login_state)
                self._mark_local(result.generation, result.login_state)
            except NotFound as exc:
                self.log.info("session_new", note=f"{exc}: starting with the profile as it is")
            except CorruptSnapshot as exc:
                self.log.error("restore_failed", reason=str(exc))
        async with self.pool.acquire() as conn:
            has_login = await repo.has_logged_in_generation(conn, self.session_id)
            await self._read_snapshot_facts(conn)
        self.watch.restored_generation(*restored, has_login_snapshot=has_login)
        removed = remove_singletons(self.profile)
        if removed:
            self.log.info("singleton_files_removed", files=removed)

    async def _keep_local(self) -> tuple[int, str | None] | None:
        """Keep the profile on disk when its marker shows it at least as new as what a
        restore would bring (a restart in place, the lease taken back after a partition);
        it is snapshotted as soon as its state is known. Returns (generation, label)."""
        assert self.pool is not None and self.lease_token is not None
        marker = LocalMarker.read(self.profile, self.session_id)
        if marker is None or not profile_has_files(self.profile):
            return None
        async with self.pool.acquire() as conn:
            generations = await repo.list_generations(conn, self.session_id)
        order = restore_order(generations)
        if not marker.keeps(generations, order[0] if order else None, self.lease_token):
            return None
        label = next(g.login_state for g in generations if g.generation == marker.generation)
        self._mark_local(marker.generation, label)
        self.local_kept = True
        self.log.info("local_profile_kept", generation=marker.generation,
                      written_under=marker.token, fencing_token=self.lease_token,
                      login_state=label)
        return marker.generation, label

    def _mark_local(self, generation: int, label: str | None) -> None:
        """Note what the profile on disk holds now, under this lease (best effort: without
        a marker the next boot restores from the database, which is safe)."""
        try:
            LocalMarker(self.session_id, generation, self.lease_token, label).write(self.profile)
        except OSError as exc:
            self.log.warning("local_marker_failed", reason=reason_of(exc))

    # ------------------------------------------------------------------ run

    async def drive(self, scope: anyio.CancelScope) -> None:
        """Run the driver; when what it runs ends by itself, end this round of serve()."""
        code = await self.driver.run(self)
        if code is not None:
            self.ended = code
            scope.cancel()

    async def on_observation(self, seen: Observation) -> None:
        """A reading of the login state, from the driver."""
        await self.watch.observe(seen)

    async def act(self, action: str, arg: str | None = None) -> str | None:
        """Something to do in the driver's own page (see Browser.act); None if it cannot."""
        return await self.driver.act(action, arg)

    async def ready_reached(self) -> None:
        """Ready: time the hand-over from the previous owner, once."""
        await self._log_handover()

    async def restore_rejected(self, generation: int) -> None:
        """Self-healing restore: the logged-in generation just restored asks for a QR code
        (a torn or incomplete capture, or a real logout). While SESSIONKEEPER_RESTORE_FALLBACKS
        allows and an older logged-in generation exists, mark this one (kept, never restored
        again) and raise RestoreRejected: serve() restores the older one. Returns when there
        is none to try, and the watch declares the logout."""
        if self.pool is None or self.lease_token is None or \
                self.fallbacks_used >= self.settings.restore_fallbacks:
            return
        try:
            async with self.pool.acquire() as conn:
                generations = await repo.list_generations(conn, self.session_id)
                labels = {g.generation: g.login_state for g in generations}
                older = next((g for g in restore_order(generations)
                              if g != generation and labels[g] in (None, "ready")), None)
                if older is None:
                    return
                marked = await repo.mark_restore_failed(conn, self.session_id, generation,
                                                        self.owner, self.lease_token)
        except DB_ERRORS as exc:
            self.log.warning("restore_fallback_failed", generation=generation,
                             reason=reason_of(exc))
            return
        if not marked:
            return
        self.fallbacks_used += 1
        self.log.warning("restore_fallback", generation=generation, next_generation=older,
                         attempt=self.fallbacks_used, of=self.settings.restore_fallbacks,
                         reason="a qr code after restoring a logged-in generation")
        raise RestoreRejected(generation)

    async def mark_logged_out(self) -> list[int]:
        """The phone unlinked the device: no logged-in generation may be restored again.
        Fenced by the lease; best effort while the database is away (none marked). A snapshot
        under way (labelled logged in when it began) commits first and is marked too."""
        if self.pool is None or self.lease_token is None:
            return []
        try:
            async with self._snapshot_lock, self.pool.acquire() as conn:
                marked = await repo.mark_logged_out(conn, self.session_id, self.owner,
                                                    self.lease_token)
                await self._read_snapshot_facts(conn)
        except DB_ERRORS as exc:
            self.log.warning("mark_logged_out_failed", reason=reason_of(exc))
            return []
        return marked

    async def checkpoint(self) -> None:
        """Make a fresh login durable now: everything to disk (our Chromium closes), a
        snapshot, then carry on (our Chromium relaunches)."""
        started = time.monotonic()
        await self.driver.pause()
        try:
            result = await self.snapshot("login")
            self.log.info("login_checkpoint", generation=result.generation if result else None,
                          duration_ms=int((time.monotonic() - started) * 1000))
        except (*DB_ERRORS, CaptureInvalid) as exc:
            if is_database_error(exc):
                self.degraded = True
                self.log.warning("login_checkpoint_deferred", reason=reason_of(exc))
            else:
                self.log.error("snapshot_failed", kind="login", reason=reason_of(exc),
                               error=type(innermost(exc)).__name__)
        await self.driver.resume(self)

    async def snapshot_loop(self) -> None:
        """Every SESSIONKEEPER_SNAPSHOT_INTERVAL seconds, a live snapshot (retried while the
        database is away; the profile keeps everything until then). A kept local profile,
        newer than the database, is snapshotted as soon as its login state is known. The waits
        are jittered (SESSIONKEEPER_SNAPSHOT_JITTER, app/snapshot_schedule.py)."""
        soon = self.local_kept
        first = True
        while True:
            if soon:
                with anyio.move_on_after(self.settings.snapshot_interval):
                    while self.driver.reads_page and self.watch.label() is None:  # noqa: ASYNC110
                        await anyio.sleep(0.5)
                soon = False
            else:
                wait = next_wait(self.settings.snapshot_interval, self.settings.snapshot_jitter,
                                 first=first, rng=self._schedule_rng)
                first = False
                self.log.debug("snapshot_scheduled", in_s=round(wait, 1))
                await anyio.sleep(wait)
            try:
                async for attempt in retrying(self.log, "snapshot_failed"):
                    with attempt:
                        try:
                            await self.snapshot("periodic")
                        except DB_ERRORS as exc:
                            if is_database_error(exc):
                                self.degraded = True
                            raise
            except (CaptureInvalid, OSError) as exc:  # local: the next interval tries again
                self.log.error("snapshot_failed", kind="periodic", reason=reason_of(exc),
                               error=type(innermost(exc)).__name__)

    def _label(self) -> Label | LabelFn:
        """What the next snapshot is labelled with: the page's state (run), or the login key
        read from the staged copy (exec; unlabelled when the target names no key)."""
        if self.driver.reads_page:
            return self.watch.label()
        return self.driver.login_key.state_of if self.driver.login_key else None

    async def snapshot(self, kind: str) -> SaveResult | None:
        """One snapshot of the profile, labelled with the login state it shows; a QR-state
        capture never replaces a logged-in generation."""
        assert self.pool is not None
        async with self._snapshot_lock:
            if self.driver.reads_page and self.watch.label() is None:
                self.log.info("snapshot_skipped", kind=kind, state=self.state.value,
                              reason="login state not known")
                return None
            if self.lease_token is None:
                self.log.info("snapshot_skipped", kind=kind, reason="no lease")
                return None
            result = await save_snapshot(self.pool, self.session_id, self.profile,
                                         self.options, kind=kind, login_state=self._label(),
                                         keep_login=True, lease_token=self.lease_token)
            self.degraded = False
            if result.skipped is not None:
                self.log.info("snapshot_skipped", kind=kind, reason=result.skipped)
                # A QR page held back: the profile on disk no longer holds the logged-in
                # generation its marker names; a restart restores that one.
                LocalMarker.clear(self.profile, self.session_id)
                return None
            if result.login_state != "qr":
                self.watch.has_login_snapshot = True
            if result.generation is not None:
                self._mark_local(result.generation, result.login_state)
            self.metrics.snapshot_committed(result)
            if result.changed:
                try:
                    async with self.pool.acquire() as conn:
                        await self._read_snapshot_facts(conn)
                except DB_ERRORS as exc:  # committed all the same; the page catches up later
                    self.log.warning("snapshot_facts_unavailable", reason=reason_of(exc))
            return result

    async def _read_snapshot_facts(self, conn: Any) -> None:
        """The newest generation and how many are kept, for the status page and metrics."""
        generations = await repo.list_generations(conn, self.session_id)
        self.generations_kept = len(generations)
        self.last_snapshot = SnapshotFacts.of(generations[0]) if generations else None

    # ------------------------------------------------------------------ shutdown

    def driver_stop_budget(self) -> float:
        """Seconds a child may take to exit, keeping the rest for the final snapshot."""
        timeout = self.settings.shutdown_timeout
        return timeout - min(FINAL_SNAPSHOT_MAX_S, timeout * FINAL_SNAPSHOT_SHARE)

    async def shutdown(self, signal_name: str | None = None,
                       since: float | None = None) -> bool:
        """Stop the driver, take the final snapshot, release the lease; shielded, and every
        step bounded so that all of it fits in SESSIONKEEPER_SHUTDOWN_TIMEOUT counted from
        `since` (when the stop signal came; default now), less a reserve for closing the
        pool and the webhook. True when the final snapshot (if any was due) landed."""
        started = time.monotonic()
        deadline = (since or started) + self.settings.shutdown_timeout - close_reserve(
            self.settings.shutdown_timeout)
        self.log.info("shutdown_started", state=self.state.value, signal=signal_name)
        result: SaveResult | None = None
        failed = False
        stopped_ms = 0
        with anyio.move_on_after(max(0.0, deadline - started), shield=True) as scope:
            held = self.pool is not None and self.lease_token is not None
            if held:
                # The lease must outlast the shutdown: a final snapshot within the timeout
                # always lands; the next owner still waits for the release.
                await self._lease_call(leases.mark_handover,
                                       self.settings.shutdown_timeout + self.settings.lease_ttl)
            stopping = time.monotonic()
            # The driver keeps to its budget (a child is killed at its end); this bounds a
            # driver that does not.
            with anyio.move_on_after(self.driver_stop_budget() + DRIVER_STOP_GRACE_S):
                await self.driver.stop(signal_name, self.driver_stop_budget())
            stopped_ms = int((time.monotonic() - stopping) * 1000)
            if self.driver.ran and held:
                try:
                    result = await self.snapshot("shutdown")
                except (*DB_ERRORS, CaptureInvalid, LeaseLost) as exc:
                    failed = True
                    self.log.error("final_snapshot_failed", reason=reason_of(exc),
                                   error=type(innermost(exc)).__name__)
            if held and await self._lease_call(leases.release):
                self.log.info("lease_released", fencing_token=self.lease_token)
        if scope.cancelled_caught:
            self.log.error("shutdown_timeout", timeout_s=self.settings.shutdown_timeout,
                           step="final snapshot" if stopped_ms else "driver stop")
        # Whatever happened above, nothing of the driver is left behind (bounded too).
        with anyio.move_on_after(max(1.0, deadline - time.monotonic()), shield=True):
            await self.driver.close()
        if scope.cancelled_caught:
            return False
        self.log.info("shutdown_completed", duration_ms=int((time.monotonic() - started) * 1000),
                      driver_stop_ms=stopped_ms,
                      generation=result.generation if result else None,
                      changed=result.changed if result else False)
        return not failed

    async def _still_registered(self) -> bool:
        assert self.pool is not None
        try:
            async with bounded(self.pool, self.lease_query_timeout) as conn:
                return await leases.is_registered(conn, self.session_id)
        except DB_ERRORS:
            return True  # unknown: keep going; renewal decides about the lease

    async def _lease_call(self, call: Callable[..., Any], *args: Any) -> Any:
        """A lease operation of ours, best effort (the database may be away at shutdown)."""
        assert self.pool is not None and self.lease_token is not None
        try:
            async with bounded(self.pool, self.lease_query_timeout) as conn:
                return await call(conn, self.session_id, self.owner, self.lease_token, *args)
        except DB_ERRORS as exc:
            self.log.warning("lease_call_failed", call=call.__name__, reason=reason_of(exc))
            return None

    async def _log_handover(self) -> None:
        """Time from the previous owner's SIGTERM to ready here (database clock), once. The
        mark is left only when this process took the lease that owner released at shutdown,
        soon after (leases.try_acquire clears it otherwise): then it is a hand-over."""
        if self.pool is None or self.lease_token is None:
            return
        try:
            async with self.pool.acquire() as conn:
                seconds = await leases.handover_seconds(conn, self.session_id)
                if seconds is not None:
                    await leases.clear_handover(conn, self.session_id, self.owner,
                                                self.lease_token)
        except DB_ERRORS:
            return
        if seconds is not None:
            self.log.info("handover_completed", seconds=round(seconds, 3))
            self.metrics.handover(self.session_id, seconds)


async def keep_session(runner: SessionRunner, stack: AsyncExitStack, isolate: bool,
                       once: bool = False) -> None:
    """Boot and serve one session. With several sessions a failure of one is logged and the
    session starts over after a pause; the others go on. With once (claim mode) the runner
    ends when serve() returns: its lease went, and the claim loop decides what runs next."""
    bind_session(runner.session_id)  # this task's lines (migrations, libraries) name it too
    delay = 5.0
    while True:
        try:
            if runner.pool is None:
                await runner.boot(stack)
            await runner.serve()
            if once or runner.ended is not None:
                return
        except Exception as exc:
            # A store missing or behind the code is the same for every session: no retry.
            if not isolate or isinstance(exc, SchemaNotReady):
                # The caller still runs the shutdown path: final snapshot, lease released.
                runner.log.error("session_failed", reason=reason_of(exc),
                                 error=type(innermost(exc)).__name__, retry_in_s=None)
                raise
            runner.log.error("session_failed", reason=reason_of(exc),
                             error=type(innermost(exc)).__name__, retry_in_s=delay)
            await runner.driver.abandon()
            runner.lease_token = None
            runner.reset_login()
            await anyio.sleep(delay)
            delay = min(delay * 2, 300.0)
