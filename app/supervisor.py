"""The daemon, read top to bottom: boot -> own -> restore -> run -> snapshot -> shutdown.

One process keeps one session: it connects to PostgreSQL (waiting while it is away), takes the
session's lease (waiting while another process holds it), restores the newest logged-in
generation into the profile directory, launches Chromium on it and watches the login state.
Every snapshot carries the lease's fencing token; a lost lease stops the browser without a
write, and the process waits for the lease again. A periodic loop snapshots the live profile;
right after a fresh login a checkpoint (close Chromium, snapshot, relaunch) makes the login
durable at once, rather than hoping Chromium flushed cookies (about 30 s) before a crash. The
first SIGTERM or SIGINT closes Chromium (it writes everything it holds), takes a final snapshot
shielded from cancellation and bounded by SESSIONKEEPER_SHUTDOWN_TIMEOUT, releases the lease
for the next owner, and exits 0; a second signal ends the process at once.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from playwright.async_api import Error as PlaywrightError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
)

from app.browser import (
    Browser,
    BrowserCrashed,
    LoginState,
    Observation,
    TargetUnreachable,
    remove_singletons,
)
from app.chromium import find_chromium
from app.errors import (
    CaptureInvalid,
    CorruptSnapshot,
    DatabaseUnavailable,
    LeaseLost,
    NotFound,
    SessionRemoved,
)
from app.events import EventLog
from app.http import HttpServer, build_app
from app.log import get_logger
from app.metrics import Metrics
from app.qr import log_qr
from app.settings import Settings
from app.status import SessionFacts, SnapshotFacts, StatusBoard
from app.store import leases, repo
from app.store.db import open_pool
from app.targets import WHATSAPP, Target, custom_target, demo_target
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import SaveResult, save_snapshot
from app.webhook import Webhook

OBSERVE_EVERY = 0.5
OBSERVE_FIRST = 0.1
# What a database outage looks like from asyncpg: retried with backoff, never fatal.
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable,
             TimeoutError, asyncio.TimeoutError)


def _retrying(log: Any, event: str, max_wait: float = 60.0) -> AsyncRetrying:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(event, attempt=state.attempt_number, reason=str(exc)[:300],
                    retry_in_s=round(state.upcoming_sleep, 1))

    return AsyncRetrying(retry=retry_if_exception_type(DB_ERRORS),
                         wait=wait_exponential(multiplier=1, min=1, max=max_wait),
                         before_sleep=before_sleep, reraise=True)


class SessionRunner:
    """Keeps one session: its browser, its snapshots, its state."""

    def __init__(self, settings: Settings, chromium: Path, target: Target,
                 started: float, metrics: Metrics | None = None,
                 webhook: Webhook | None = None) -> None:
        self.settings = settings
        self.session_id = settings.session_id
        self.profile = settings.profile_dir.absolute()
        self.browser = Browser(chromium, self.profile, target)
        self.options = VaultOptions.from_settings(settings)
        self.owner = leases.owner_id()
        self.metrics = metrics or Metrics()
        # Warnings and errors are counted; state changes and failed snapshots go to the webhook.
        self.log = EventLog(get_logger(session_id=self.session_id), self.session_id,
                            self.owner, self.metrics, webhook)
        self.started = started
        self.pool: asyncpg.Pool | None = None
        self._state = LoginState.STARTING
        self._degraded = False
        self._shown = self.shown_state()
        self.qr_payload: str | None = None
        self.qr_serial = 0
        self.has_login_snapshot = False
        self.browser_ran = False
        self.last_snapshot: SnapshotFacts | None = None
        self.generations_kept: int | None = None
        self._snapshot_lock = anyio.Lock()
        # Called with the payload of the first QR code of a login (the demo's simulated phone).
        self.on_first_qr: Callable[[str], object] | None = None
        self.lease_token: int | None = None
        self.other_holder: str | None = None  # who holds the lease while this one waits
        # Claim mode: the lease was claimed for this runner; when it is lost or the session is
        # removed, the runner ends instead of waiting (the claim loop decides what runs).
        self.claimed = False

    # ------------------------------------------------------------------ facts

    @property
    def state(self) -> LoginState:
        """The login state the browser shows (or the step before it)."""
        return self._state

    @state.setter
    def state(self, value: LoginState) -> None:
        self._state = value
        self._report_state()

    @property
    def degraded(self) -> bool:
        """True while the database is away (the browser keeps running)."""
        return self._degraded

    @degraded.setter
    def degraded(self, value: bool) -> None:
        self._degraded = value
        self._report_state()

    def shown_state(self) -> str:
        """The state an operator sees: `degraded` wins over the login state."""
        return "degraded" if self._degraded else self._state.value

    def _report_state(self) -> None:
        shown = self.shown_state()
        if shown != self._shown:
            previous, self._shown = self._shown, shown
            self.log.info("state_changed", state=shown, previous=previous,
                          qr_available=self.qr_payload is not None)

    def facts(self) -> SessionFacts:
        """What the status page, /api/sessions and /metrics show."""
        return SessionFacts(
            session_id=self.session_id, state=self.shown_state(), run_here=True,
            ready=self.state is LoginState.READY and not self.degraded,
            degraded=self.degraded, qr_available=self.qr_payload is not None,
            qr_serial=self.qr_serial,
            lease_holder=self.owner if self.lease_token is not None else self.other_holder,
            lease_held=self.lease_token is not None, fencing_token=self.lease_token,
            last_snapshot=self.last_snapshot, generations_kept=self.generations_kept)

    def status(self) -> dict[str, Any]:
        """What /readyz reports."""
        facts = self.facts().as_json()
        return {
            "session_id": self.session_id, "state": self.state.value,
            "ready": facts["ready"], "degraded": self.degraded,
            "qr_available": facts["qr_available"], "last_snapshot": facts["last_snapshot"],
        }

    # ------------------------------------------------------------------ boot

    async def boot(self, stack: AsyncExitStack) -> None:
        """Connect (waiting for the database), then restore the newest logged-in generation."""
        self.state = LoginState.STARTING
        async for attempt in _retrying(self.log, "database_unavailable"):
            with attempt:
                try:
                    self.pool = await stack.enter_async_context(open_pool(self.settings))
                except DB_ERRORS:
                    self.degraded = True
                    raise
        self.degraded = False

    async def serve(self) -> None:
        """Own the session and keep it, for as long as the lease holds; when it is lost, stop
        the browser without writing and wait for the lease again."""
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
                    async for attempt in _retrying(self.log, "database_unavailable"):
                        with attempt:
                            await self.restore()
                    tg.start_soon(self.browser_loop)
                    tg.start_soon(self.snapshot_loop)
            except* LeaseLost as group:
                await self.browser.close()  # no snapshot: the session is someone else's now
                self.log.error("lease_lost", fencing_token=self.lease_token,
                               reason=str(group.exceptions[0])[:300])
                self.lease_token = None
                self.state, self.qr_payload = LoginState.STARTING, None
            except* SessionRemoved:
                self.log.info("session_removed")
                await self.shutdown()  # final snapshot, then the lease goes back
                self.lease_token = None
                self.claimed = True  # removed: end here rather than wait for the lease

    async def acquire_lease(self) -> None:
        """Wait until this process holds the session's lease (polling while another does)."""
        assert self.pool is not None
        ttl = self.settings.lease_ttl
        waited = time.monotonic()
        last_holder: str | None = None
        while True:
            async for attempt in _retrying(self.log, "database_unavailable"):
                with attempt:
                    async with self.pool.acquire() as conn:
                        token = await leases.try_acquire(conn, self.session_id, self.owner, ttl)
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
        self.lease_token, self.other_holder = token, None
        self.log.info("lease_acquired", fencing_token=token, owner=self.owner,
                      waited_ms=int((time.monotonic() - waited) * 1000))

    async def keep_lease(self) -> None:
        """Renew every third of the TTL; LeaseLost when another owner took it, or when no
        renewal succeeded for a whole TTL (a partition or a long pause)."""
        assert self.pool is not None and self.lease_token is not None
        ttl = self.settings.lease_ttl
        renewed = time.monotonic()
        while True:
            await anyio.sleep(ttl / 3)
            try:
                async with self.pool.acquire() as conn:
                    ok = await leases.renew(conn, self.session_id, self.owner,
                                            self.lease_token, ttl)
            except DB_ERRORS as exc:
                self.degraded = True
                self.log.warning("lease_renewal_failed", reason=str(exc)[:300])
                ok = None
            if ok and self.claimed and not await self._still_registered():
                raise SessionRemoved(self.session_id)
            if ok:
                renewed = time.monotonic()
            elif ok is False:
                raise LeaseLost("another process took the lease")
            elif time.monotonic() - renewed > ttl:
                raise LeaseLost(f"no renewal for {ttl:.0f} s")

    async def restore(self) -> None:
        """The newest good generation into the profile directory; an empty profile if none."""
        assert self.pool is not None
        try:
            result = await restore_profile(self.pool, self.session_id, self.profile)
            self.log.info("session_restored", generation=result.generation, files=result.files,
                          bytes=result.bytes_raw, duration_ms=result.duration_ms)
            self.metrics.restored(self.session_id, result.duration_ms)
        except NotFound:
            self.log.info("session_new", note="no snapshot yet: starting with an empty profile")
        except CorruptSnapshot as exc:
            self.log.error("restore_failed", reason=str(exc))
        async with self.pool.acquire() as conn:
            self.has_login_snapshot = await repo.has_logged_in_generation(conn, self.session_id)
            await self._read_snapshot_facts(conn)
        removed = remove_singletons(self.profile)
        if removed:
            self.log.info("singleton_files_removed", files=removed)

    # ------------------------------------------------------------------ run

    async def browser_loop(self) -> None:
        """Run Chromium and watch the login; relaunch with backoff when it crashes."""
        delay = 1.0
        while True:
            launched = time.monotonic()
            try:
                await self.browser.start()
                if self.browser_ran:
                    self.log.info("browser_restarted")
                self.browser_ran = True
                self.log.info("browser_started", url=self.browser.target.url,
                              since_start_ms=self._since_start())
                await self.watch()
            except TargetUnreachable as exc:
                self.log.warning("target_unreachable", url=self.browser.target.url,
                                 reason=str(exc), retry_in_s=delay)
            except (BrowserCrashed, PlaywrightError) as exc:
                if time.monotonic() - launched > 300:
                    delay = 1.0  # it ran well for a while: this is a new incident
                self.log.error("browser_crashed", reason=str(exc).splitlines()[0][:300],
                               retry_in_s=delay)
            await self.browser.close()
            self.state, self.qr_payload = LoginState.STARTING, None
            await anyio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def watch(self) -> None:
        """Poll the page for its login state until the browser goes away (quickly until the
        state is known, so a restored session reports ready without delay)."""
        while True:
            seen = await self.browser.observe()
            if seen.state is not None:
                await self.on_observation(seen)
            known = self.state in (LoginState.READY, LoginState.QR_REQUIRED,
                                   LoginState.LOGGED_OUT)
            await anyio.sleep(OBSERVE_EVERY if known else OBSERVE_FIRST)

    async def on_observation(self, seen: Observation) -> None:
        """Log state changes; show a new QR code; checkpoint a fresh login."""
        if seen.state is None:
            return
        # A QR code is up (also on a logged-out page that offers one): log and show each new one.
        if seen.state is LoginState.QR_REQUIRED or seen.qr_payload is not None:
            fresh = self.state not in (LoginState.QR_REQUIRED, LoginState.LOGGED_OUT)
            if fresh or seen.qr_payload != self.qr_payload:
                self.qr_payload = seen.qr_payload
                self.qr_serial += 1
                log_qr(self.log, "qr_required" if fresh else "qr_rotated", seen.qr_payload,
                       self.settings.log_qr)
                if seen.qr_payload and fresh and self.on_first_qr is not None:
                    self.on_first_qr(seen.qr_payload)
        if seen.state is self.state:
            return
        if seen.state is LoginState.READY:
            self.qr_payload = None  # before the state: a ready session offers no QR code
        previous, self.state = self.state, seen.state
        if seen.state is LoginState.READY:
            self.log.info("ready", previous=previous.value, since_start_ms=self._since_start())
            await self._log_handover()
            if not self.has_login_snapshot:
                await self.checkpoint()
            return
        # Whatever READY comes after a QR code or a logout is a fresh login to checkpoint.
        self.has_login_snapshot = False
        if seen.state is LoginState.LOGGED_OUT:
            self.log.warning("logged_out", previous=previous.value)

    async def checkpoint(self) -> None:
        """Make a fresh login durable now: close Chromium, snapshot, relaunch."""
        started = time.monotonic()
        await self.browser.close()
        try:
            result = await self.snapshot("login")
            self.log.info("login_checkpoint", generation=result.generation if result else None,
                          duration_ms=int((time.monotonic() - started) * 1000))
        except DB_ERRORS as exc:
            self.degraded = True
            self.log.warning("login_checkpoint_deferred", reason=str(exc)[:300])
        except CaptureInvalid as exc:
            self.log.error("snapshot_failed", kind="login", reason=str(exc))
        await self.browser.start()

    async def snapshot_loop(self) -> None:
        """Every SESSIONKEEPER_SNAPSHOT_INTERVAL seconds, a live snapshot (retried while the
        database is away; the profile keeps everything until then)."""
        while True:
            await anyio.sleep(self.settings.snapshot_interval)
            try:
                async for attempt in _retrying(self.log, "snapshot_failed"):
                    with attempt:
                        try:
                            await self.snapshot("periodic")
                        except DB_ERRORS:
                            self.degraded = True
                            raise
            except CaptureInvalid as exc:
                self.log.error("snapshot_failed", kind="periodic", reason=str(exc))

    async def snapshot(self, kind: str) -> SaveResult | None:
        """One snapshot of the profile, labelled with the login state it shows."""
        assert self.pool is not None
        async with self._snapshot_lock:
            if self.state is LoginState.READY:
                login_state = "ready"
            elif self.state in (LoginState.QR_REQUIRED, LoginState.LOGGED_OUT):
                login_state = "qr"
            else:
                self.log.info("snapshot_skipped", kind=kind, reason="login state not known yet")
                return None
            if login_state == "qr":
                async with self.pool.acquire() as conn:
                    if await repo.has_logged_in_generation(conn, self.session_id):
                        # A QR page holds no login; never let it replace one.
                        self.log.info("snapshot_skipped", kind=kind,
                                      reason="qr page; a logged-in generation is kept")
                        return None
            if self.lease_token is None:
                self.log.info("snapshot_skipped", kind=kind, reason="no lease")
                return None
            result = await save_snapshot(self.pool, self.session_id, self.profile,
                                         self.options, kind=kind, login_state=login_state,
                                         lease_token=self.lease_token)
            self.degraded = False
            if login_state == "ready":
                self.has_login_snapshot = True
            self.metrics.snapshot_committed(result)
            if result.changed:
                try:
                    async with self.pool.acquire() as conn:
                        await self._read_snapshot_facts(conn)
                except DB_ERRORS as exc:  # committed all the same; the page catches up later
                    self.log.warning("snapshot_facts_unavailable", reason=str(exc)[:300])
            return result

    async def _read_snapshot_facts(self, conn: Any) -> None:
        """The newest generation and how many are kept, for the status page and metrics."""
        generations = await repo.list_generations(conn, self.session_id)
        self.generations_kept = len(generations)
        self.last_snapshot = SnapshotFacts.of(generations[0]) if generations else None

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self) -> bool:
        """Close Chromium, take the final snapshot; shielded and bounded. True when done."""
        started = time.monotonic()
        self.log.info("shutdown_started", state=self.state.value)
        result: SaveResult | None = None
        with anyio.move_on_after(self.settings.shutdown_timeout, shield=True) as scope:
            held = self.pool is not None and self.lease_token is not None
            if held:
                await self._lease_call(leases.mark_handover)
            await self.browser.close()
            if self.browser_ran and held:
                try:
                    result = await self.snapshot("shutdown")
                except (*DB_ERRORS, CaptureInvalid, LeaseLost) as exc:
                    self.log.error("final_snapshot_failed", reason=str(exc)[:300])
            if held and await self._lease_call(leases.release):
                self.log.info("lease_released", fencing_token=self.lease_token)
            await self.browser.stop()
        if scope.cancelled_caught:
            self.log.error("shutdown_timeout", timeout_s=self.settings.shutdown_timeout)
            return False
        self.log.info("shutdown_completed", duration_ms=int((time.monotonic() - started) * 1000),
                      generation=result.generation if result else None,
                      changed=result.changed if result else False)
        return True

    async def _still_registered(self) -> bool:
        assert self.pool is not None
        try:
            async with self.pool.acquire() as conn:
                return await leases.is_registered(conn, self.session_id)
        except DB_ERRORS:
            return True  # unknown: keep going; renewal decides about the lease

    async def _lease_call(self, call: Callable[..., Any]) -> Any:
        """A lease operation of ours, best effort (the database may be away at shutdown)."""
        assert self.pool is not None and self.lease_token is not None
        try:
            async with self.pool.acquire() as conn:
                return await call(conn, self.session_id, self.owner, self.lease_token)
        except DB_ERRORS as exc:
            self.log.warning("lease_call_failed", call=call.__name__, reason=str(exc)[:300])
            return None

    async def _log_handover(self) -> None:
        """Time from the previous owner's SIGTERM to ready here (database clock), once."""
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
        if seconds is not None and seconds < 3600:
            self.log.info("handover_completed", seconds=round(seconds, 3))
            self.metrics.handover(self.session_id, seconds)

    def _since_start(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


@asynccontextmanager
async def _target(settings: Settings) -> AsyncIterator[tuple[Target, Any]]:
    """The configured target (and, for `demo`, the bundled site served on loopback)."""
    if settings.target == "whatsapp":
        yield WHATSAPP, None
    elif settings.target == "custom":
        yield custom_target(settings), None
    else:
        from app.demo.server import DemoSite  # noqa: PLC0415

        site = DemoSite(port=settings.demo_port, message_rate=settings.demo_message_rate,
                        history_kb=int(settings.demo_history_mb * 1024))
        url = f"http://127.0.0.1:{settings.demo_port}/"
        binder: asyncio.Task[None] | None = None
        try:
            await site.start()
            get_logger().info("demo_site_started", url=url,
                              link="run `sessionkeeper demo link` to approve the QR code")
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            # During a hand-over the previous owner still serves the demo site on this port
            # (the same origin, so the restored profile's data belongs to it); take the port
            # over once it is free.
            get_logger().info("demo_site_port_busy", url=url)
            binder = asyncio.create_task(_bind_when_free(site))
        try:
            yield demo_target(url), site
        finally:
            if binder is not None:
                binder.cancel()
            await site.stop()


async def _bind_when_free(site: Any) -> None:
    while True:
        try:
            await site.start()
        except OSError:
            await asyncio.sleep(0.2)
            continue
        get_logger().info("demo_site_started", url=site.url)
        return


async def _start_webhook(settings: Settings, stack: AsyncExitStack) -> Webhook | None:
    """The webhook sender, stopped (after a short drain) when the daemon ends."""
    if settings.webhook_url is None:
        return None
    webhook = Webhook(settings.webhook_url.get_secret_value(), settings.webhook_timeout)
    await webhook.start()
    stack.push_async_callback(webhook.stop)
    return webhook


def _install_signals(on_signal: Callable[[str], None]) -> None:
    """First SIGTERM/SIGINT starts the shutdown; the handlers go, so a second one kills."""
    loop = asyncio.get_running_loop()

    def handler(sig: signal.Signals) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(s)
            signal.signal(s, signal.SIG_DFL)
        on_signal(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler, sig)


def _simulate_phone(runner: SessionRunner, site: Any, delay: float) -> None:
    """Demo only: approve the QR code a session shows, `delay` seconds after it first shows
    one, and again while it still asks (codes rotate, and one site serves many sessions)."""
    loop = asyncio.get_running_loop()

    def approve() -> None:
        if runner.state is LoginState.QR_REQUIRED and runner.qr_payload:
            site.link(runner.qr_payload)
        if runner.state is not LoginState.READY:
            loop.call_later(delay, approve)

    runner.on_first_qr = lambda _payload: loop.call_later(delay, approve)


class _Claimer:
    """Claim mode: take registered sessions nobody owns, up to SESSIONKEEPER_MAX_SESSIONS, one
    runner each; a runner whose lease is lost or whose session is removed ends, freeing a slot.
    """

    POLL = 1.0

    def __init__(self, settings: Settings, chromium: Path, target: Target, demo_site: Any,
                 started: float, runners: list[SessionRunner], metrics: Metrics,
                 webhook: Webhook | None) -> None:
        self.settings = settings
        self.chromium = chromium
        self.target = target
        self.demo_site = demo_site
        self.started = started
        self.runners = runners  # shared with run_daemon: the live ones, for status/shutdown
        self.metrics = metrics
        self.webhook = webhook
        self.owner = leases.owner_id()
        self.log = get_logger()
        self.pool: asyncpg.Pool | None = None  # once connected; the status page reads it too

    def _target_for(self, name: str | None) -> Target | None:
        if name is None or name == self.settings.target:
            return self.target
        if name == "whatsapp":
            return WHATSAPP
        return None  # demo or custom need this replica to be configured for them

    async def run(self, stack: AsyncExitStack, tg: Any) -> None:
        """Claim every POLL seconds while there are free slots."""
        assert self.settings.max_sessions is not None
        pool: asyncpg.Pool | None = None
        async for attempt in _retrying(self.log, "database_unavailable"):
            with attempt:
                pool = await stack.enter_async_context(
                    open_pool(self.settings, max_size=2 + 2 * self.settings.max_sessions))
        assert pool is not None
        self.pool = pool
        while True:
            free = self.settings.max_sessions - len(self.runners)
            try:
                async with pool.acquire() as conn:
                    # One at a time: replicas starting together share the sessions out.
                    claims = await leases.claim(conn, self.owner, self.settings.lease_ttl,
                                                min(free, 1))
            except DB_ERRORS as exc:
                self.log.warning("claim_failed", reason=str(exc)[:300])
                claims = []
            for claim in claims:
                target = self._target_for(claim.target)
                if target is None:
                    self.log.error("claim_skipped", claimed_session=claim.session_id,
                                   reason=f"this replica does not serve target {claim.target}")
                    async with pool.acquire() as conn:
                        await leases.release(conn, claim.session_id, self.owner, claim.token)
                    continue
                runner = SessionRunner(
                    self.settings.model_copy(update={
                        "session_id": claim.session_id,
                        "profile_dir": self.settings.profile_dir / claim.session_id}),
                    self.chromium, target, self.started, self.metrics, self.webhook)
                runner.owner, runner.lease_token, runner.claimed = (
                    self.owner, claim.token, True)
                runner.pool = pool  # one pool per replica; also lets shutdown release
                if self.demo_site is not None and self.settings.demo_link_after is not None:
                    _simulate_phone(runner, self.demo_site, self.settings.demo_link_after)
                runner.log.info("session_claimed", fencing_token=claim.token)
                self.runners.append(runner)
                tg.start_soon(self._serve, runner, stack)
            await anyio.sleep(self.POLL)

    async def _serve(self, runner: SessionRunner, stack: AsyncExitStack) -> None:
        try:
            await _keep_session(runner, stack, isolate=True, once=True)
        finally:
            if runner.lease_token is None and runner in self.runners:
                self.runners.remove(runner)
                await runner.browser.stop()


def session_settings(settings: Settings) -> list[Settings]:
    """One Settings per session: SESSIONKEEPER_SESSION_IDS gives each its own profile folder."""
    if not settings.session_ids:
        return [settings]
    return [settings.model_copy(update={"session_id": sid,
                                        "profile_dir": settings.profile_dir / sid})
            for sid in settings.session_ids]


async def _keep_session(runner: SessionRunner, stack: AsyncExitStack, isolate: bool,
                        once: bool = False) -> None:
    """Boot and serve one session. With several sessions a failure of one is logged and the
    session starts over after a pause; the others go on. With once (claim mode) the runner
    ends when serve() returns: its lease went, and the claim loop decides what runs next."""
    delay = 5.0
    while True:
        try:
            if runner.pool is None:
                await runner.boot(stack)
            await runner.serve()
            if once:
                return
        except Exception as exc:
            if not isolate:
                raise
            runner.log.error("session_failed", reason=repr(exc)[:300], retry_in_s=delay)
            await runner.browser.close()
            runner.lease_token = None
            runner.state = LoginState.STARTING
            await anyio.sleep(delay)
            delay = min(delay * 2, 300.0)


async def run_daemon(settings: Settings) -> int:
    """Run until a signal; returns the exit code."""
    started = time.monotonic()
    log = get_logger(session_id=settings.session_id)
    chromium = find_chromium(settings.chromium_path)
    stop = anyio.Event()

    def on_signal(name: str) -> None:
        log.info("signal_received", signal=name)
        stop.set()

    _install_signals(on_signal)
    async with AsyncExitStack() as stack:
        target, demo_site = await stack.enter_async_context(_target(settings))
        metrics = Metrics()
        webhook = await _start_webhook(settings, stack)
        runners = ([] if settings.max_sessions is not None else
                   [SessionRunner(s, chromium, target, started, metrics, webhook)
                    for s in session_settings(settings)])
        if demo_site is not None and settings.demo_link_after is not None:
            for runner in runners:
                _simulate_phone(runner, demo_site, settings.demo_link_after)
        claimer = _Claimer(settings, chromium, target, demo_site, started, runners, metrics,
                           webhook)

        def status() -> dict[str, Any]:
            if len(runners) == 1 and settings.max_sessions is None:
                return runners[0].status()
            facts = [r.status() for r in runners]
            return {"ready": all(f["ready"] for f in facts), "sessions": facts}

        board = StatusBoard(runners, claimer.owner, settings.max_sessions is not None,
                            lambda: claimer.pool)
        token = settings.http_token.get_secret_value() if settings.http_token else None
        http = HttpServer(build_app(status, board, metrics, token),
                          "0.0.0.0", settings.port)  # noqa: S104
        await http.start()
        stack.push_async_callback(http.stop)
        log.info("daemon_started", target=target.name, chromium=str(chromium),
                 port=settings.port, sessions=[r.session_id for r in runners])
        if token is None:
            log.warning("status_page_unprotected", port=settings.port,
                        fix="set SESSIONKEEPER_HTTP_TOKEN: the page shows the login QR code")
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_on_signal)
            if settings.max_sessions is not None:
                tg.start_soon(claimer.run, stack, tg)
            else:
                for runner in runners:
                    tg.start_soon(runner.browser.prepare)
                    tg.start_soon(_keep_session, runner, stack, len(runners) > 1)
        results: list[bool] = []

        async def shut(runner: SessionRunner) -> None:
            results.append(await runner.shutdown())

        async with anyio.create_task_group() as tg:
            for runner in runners:
                tg.start_soon(shut, runner)
    return 0 if all(results) else 1
