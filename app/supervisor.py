"""The process: `run` keeps sessions in our own Chromium, `exec` keeps one under a bot's process.

Both read the same way, the lifecycle of each session being app/session.py (boot -> own ->
restore -> drive -> snapshot -> shutdown):

- `run`: one runner per session (SESSIONKEEPER_SESSION_ID, SESSIONKEEPER_SESSION_IDS, or those
  claimed in claim mode), each driving a Chromium of its own (app/drivers/chromium.py), and the
  HTTP server (health, status page, metrics, and with SESSIONKEEPER_CDP the DevTools proxy).
- `exec -- CMD`: one runner whose driver is CMD (app/drivers/child.py); the process exits with
  CMD's exit code once the final snapshot is taken. PORT is left to CMD.

The first SIGTERM or SIGINT stops the drivers (Chromium closes and writes what it holds; a child
gets the signal), takes the final snapshots, releases the leases. A repeat of the same signal
within REPEAT_WINDOW_S of the first is the same stop request (a group kill and a wrapper that
forwards it deliver two copies milliseconds apart) and is ignored; a later one, or the other
signal, ends the process at once (and a child's whole process group with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from app.child_env import exec_env
from app.chromium import find_chromium
from app.claims import Claimer
from app.drivers.chromium import ChromiumDriver
from app.log import bind_session, get_logger
from app.login_state import LoginState
from app.metrics import Metrics
from app.session import SessionRunner, close_reserve, keep_session
from app.settings import Settings
from app.status import StatusBoard
from app.store.db import require_database
from app.store.schema import SchemaNotReady
from app.targets import WHATSAPP, Target, custom_target, demo_target, demo_url, login_key_for

if TYPE_CHECKING:
    from app.webhook import Webhook

__all__ = ["run_daemon", "run_exec", "session_settings"]


async def _load(name: str) -> ModuleType:
    """Import a module in a worker thread. aiohttp (the HTTP server, the demo site) is half a
    second of imports that the event loop would otherwise wait through: meanwhile it spawns
    Playwright's driver, connects to the database, restores (tests/test_boot_imports.py)."""
    return await anyio.to_thread.run_sync(importlib.import_module, name)


@contextlib.contextmanager
def _prepared_early(drivers: Sequence[ChromiumDriver]) -> Iterator[None]:
    """Start each driver's preparation now, before anything else of the boot: Playwright's
    driver process takes about a second to answer, and comes up alongside the imports, the
    database and the restore instead of after them. It never touches the profile (Chromium
    launches once the restore is done). Its errors are the session's: the session prepares
    again (the same lock: a preparation under way is waited for) and fails there."""
    tasks = [asyncio.ensure_future(d.prepare()) for d in drivers]
    for task in tasks:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()


@asynccontextmanager
async def _demo_site(settings: Settings) -> AsyncIterator[Any]:
    """For the `demo` target, the bundled site served on loopback; None for other targets."""
    if settings.target != "demo":
        yield None
        return
    demo = await _load("app.demo.server")
    site = demo.DemoSite(port=settings.demo_port, message_rate=settings.demo_message_rate,
                         history_kb=int(settings.demo_history_mb * 1024))
    url = demo_url(settings)
    binder: asyncio.Task[None] | None = None
    try:
        await site.start()
        get_logger().info("demo_site_started", url=url,
                          link="run `sessionkeeper demo link` to approve the QR code")
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # During a hand-over the previous owner still serves the demo site on this port (the
        # same origin, so the restored profile's data belongs to it); take the port over once
        # it is free.
        get_logger().info("demo_site_port_busy", url=url)
        binder = asyncio.create_task(_bind_when_free(site))
    try:
        yield site
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


def _target_of(settings: Settings, name: str | None = None) -> Target | None:
    """The page our Chromium keeps logged in: the configured target, or a session's own
    (claim mode); None when this replica is not configured for it (demo, custom)."""
    name = name or settings.target
    if name == "whatsapp":
        return WHATSAPP
    if name != settings.target:
        return None
    return demo_target(demo_url(settings)) if name == "demo" else custom_target(settings)


async def _start_webhook(settings: Settings, stack: AsyncExitStack) -> Webhook | None:
    """The webhook sender, stopped (after a short drain) when the daemon ends."""
    if settings.webhook_url is None:
        return None
    from app.webhook import Webhook  # noqa: PLC0415  (aiohttp's client: only with a webhook)

    webhook = Webhook(settings.webhook_url.get_secret_value(), settings.webhook_timeout)
    await webhook.start()
    stack.push_async_callback(webhook.stop)
    return webhook


# A repeat of the first stop signal within this many seconds is the same request: copies from
# a group kill, a wrapper forwarding its own, a supervisor sending SIGTERM to every process.
REPEAT_WINDOW_S = 2.0


def _install_signals(on_signal: Callable[[str], None], log: Any,
                     on_second: Callable[[], None] | None = None) -> None:
    """First SIGTERM/SIGINT starts the shutdown. The same signal again within REPEAT_WINDOW_S
    is ignored (logged once at debug); a later one, or the other signal, kills (after
    on_second, which takes a child's process group down too)."""
    loop = asyncio.get_running_loop()
    first: list[tuple[int, float]] = []  # (signal, when) of the stop request
    repeats = [0]

    def note_repeat(name: str, after_ms: int) -> None:
        log.debug("signal_repeat_ignored", signal=name, after_ms=after_ms,
                  window_s=REPEAT_WINDOW_S)

    def received(signum: int) -> None:
        if not first:
            first.append((signum, time.monotonic()))
            # From now on Python-level handlers: they run even while the event loop is busy
            # with the shutdown, and a kill must not wait for it.
            for s in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(s)
                signal.signal(s, later)
            on_signal(signal.Signals(signum).name)
            return
        first_signum, at = first[0]
        since = time.monotonic() - at
        if signum == first_signum and since < REPEAT_WINDOW_S:
            repeats[0] += 1
            if repeats[0] == 1:
                # Never log inside a signal handler (the log's write lock may be held by the
                # line being written): the loop does it.
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(note_repeat, signal.Signals(signum).name,
                                              int(since * 1000))
            return
        if on_second is not None:
            on_second()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def later(signum: int, _frame: Any) -> None:
        received(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        # Copies delivered before the first is handled queue up here too: received() tells.
        loop.add_signal_handler(sig, received, int(sig))


def _route_loop_errors() -> None:
    """Errors nobody awaited go to the structured log, not to stderr as text: a Playwright
    driver that died with Chromium (a group kill, Ctrl-C) leaves a future with "Connection
    closed" behind, which is expected then (debug); anything else is a warning."""
    loop = asyncio.get_running_loop()
    log = get_logger()

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        text = f"{type(exc).__name__}: {exc}" if exc is not None else None
        if text is not None and "Connection closed" in text:
            log.debug("driver_connection_closed", reason=text.splitlines()[0][:300])
            return
        log.warning("loop_error", detail=str(context.get("message", ""))[:300],
                    reason=(text or "").splitlines()[0][:300] if text else None)

    loop.set_exception_handler(handler)


def _simulate_phone(runner: SessionRunner, site: Callable[[], Any], delay: float) -> None:
    """Demo only: approve the QR code a session shows, `delay` seconds after it first shows
    one, and again while it still asks (codes rotate, and one site serves many sessions).
    site() is the demo site (it starts alongside the sessions; a QR code comes after)."""
    loop = asyncio.get_running_loop()

    def approve() -> None:
        if runner.state is LoginState.QR_REQUIRED and runner.qr_payload and site():
            site().link(runner.qr_payload)
        if runner.state is not LoginState.READY:
            loop.call_later(delay, approve)

    runner.watch.on_first_qr = lambda _payload: loop.call_later(delay, approve)


def session_settings(settings: Settings) -> list[Settings]:
    """One Settings per session: SESSIONKEEPER_SESSION_IDS gives each its own profile folder."""
    if not settings.session_ids:
        return [settings]
    return [settings.model_copy(update={"session_id": sid,
                                        "profile_dir": settings.profile_dir / sid})
            for sid in settings.session_ids]


class _StopSignal:
    """The first stop signal, awaited by the task group that runs the sessions."""

    def __init__(self, log: Any) -> None:
        self.event = anyio.Event()
        self.name: str | None = None
        self.at: float | None = None  # monotonic time of the signal: the shutdown counts from it
        self.log = log

    def __call__(self, name: str) -> None:
        self.log.info("signal_received", signal=name)
        self.name = name
        self.at = time.monotonic()
        self.event.set()

    def close_budget(self, settings: Settings) -> float:
        """Seconds left for closing the pool, webhook and HTTP server: the rest of the
        shutdown timeout counted from the signal (at least the reserve kept for it)."""
        end = (self.at or time.monotonic()) + settings.shutdown_timeout
        return max(close_reserve(settings.shutdown_timeout), end - time.monotonic())

    async def cancel_on_signal(self, scope: anyio.CancelScope) -> None:
        """Cancel scope once a stop signal came."""
        await self.event.wait()
        scope.cancel()


def warn_if_unencrypted(settings: Settings, log: Any) -> None:
    """`encryption_disabled`: a stored profile is a working linked device, and without a key
    whoever reads the database (or a dump, or a backup) can take the account over."""
    if settings.encryption_key is None:
        log.warning("encryption_disabled",
                    note="profiles are stored in plaintext: set SESSIONKEEPER_ENCRYPTION_KEY "
                    "(`sessionkeeper keygen` prints one; `sessionkeeper rekey` seals what is "
                    "already stored)")


async def run_daemon(settings: Settings) -> int:
    """`run`: keep the sessions in our own Chromium until a signal; returns the exit code."""
    started = time.monotonic()
    if settings.max_sessions is None and len(session_settings(settings)) == 1:
        # One session: every line of the process is about it (migrations, libraries). With
        # several, each session's task binds its own (keep_session); process-wide lines
        # (the shared pool's migrations in claim mode, the HTTP server) carry none.
        bind_session(session_settings(settings)[0].session_id)
    log = get_logger(session_id=settings.session_id)
    require_database(settings)  # deployed without DATABASE_URL: one line, before anything
    if settings.cdp:
        from app.cdp import check_cdp_settings  # noqa: PLC0415

        check_cdp_settings(settings)
    warn_if_unencrypted(settings, log)
    chromium = find_chromium(settings.chromium_path)
    target = _target_of(settings)
    assert target is not None
    stop = _StopSignal(log)
    _install_signals(stop, log)
    _route_loop_errors()

    # The demo site and the HTTP server start alongside the sessions (their connection,
    # lease and restore); Chromium launches once both answer, so that from `browser_started`
    # on, the status page and /readyz follow what the log says.
    front_up = anyio.Event()

    def make_driver(s: Settings, session_target: Target) -> ChromiumDriver:
        return ChromiumDriver(chromium, s.profile_dir.absolute(), session_target, cdp=s.cdp,
                              launch_after=front_up)

    # The sessions this process runs from the start (not claim mode): their drivers are
    # prepared first, before anything else (see _prepared_early).
    early = {s.session_id: make_driver(s, t) for s in session_settings(settings)
             if settings.max_sessions is None and (t := _target_of(s)) is not None}
    async with AsyncExitStack() as stack:
        stack.enter_context(_prepared_early(list(early.values())))
        await anyio.lowlevel.checkpoint()  # each preparation runs up to its driver's spawn
        demo_site: Any = None
        metrics = Metrics()
        webhook = await _start_webhook(settings, stack)

        def make_runner(s: Settings, target_name: str | None = None) -> SessionRunner | None:
            session_target = _target_of(s, target_name)
            if session_target is None:
                return None
            driver = early.pop(s.session_id, None) or make_driver(s, session_target)
            runner = SessionRunner(s, driver, started, metrics, webhook)
            if settings.target == "demo" and s.demo_link_after is not None:
                _simulate_phone(runner, lambda: demo_site, s.demo_link_after)
            return runner

        runners: list[SessionRunner] = []
        if settings.max_sessions is None:
            runners += [r for s in session_settings(settings) if (r := make_runner(s))]
        claimer = Claimer(settings, make_runner, runners, metrics, webhook)
        metrics.watch_browsers(lambda: {
            r.session_id: pid for r in list(runners)
            if (pid := getattr(r.driver, "browser_pid", None)) is not None})

        def status() -> dict[str, Any]:
            if len(runners) == 1 and settings.max_sessions is None:
                return runners[0].status()
            facts = [r.status() for r in runners]
            return {"ready": all(f["ready"] for f in facts), "sessions": facts}

        def attachable(session_id: str) -> SessionRunner | None:
            return next((r for r in list(runners) if r.session_id == session_id), None)

        board = StatusBoard(runners, claimer.owner, settings.max_sessions is not None,
                            lambda: claimer.pool)
        token = settings.http_token.get_secret_value() if settings.http_token else None

        async def start_front() -> None:
            """The demo site and the HTTP server (their imports in a worker thread), while
            the sessions connect, take their leases and restore."""
            nonlocal demo_site
            demo_site = await stack.enter_async_context(_demo_site(settings))
            cdp = (await _load("app.cdp")).CdpRoutes(attachable, settings.cdp_bind) \
                if settings.cdp else None
            web = await _load("app.http")
            http = web.HttpServer(web.build_app(status, board, metrics, token, cdp),
                                  settings.port)
            await http.start()
            stack.push_async_callback(http.stop)
            log.info("daemon_started", target=target.name, chromium=str(chromium),
                     port=settings.port, sessions=[r.session_id for r in runners],
                     cdp=settings.cdp, cdp_bind=str(settings.cdp_bind or "any"))
            if token is None:
                log.warning("status_page_unprotected", port=settings.port,
                            fix="set SESSIONKEEPER_HTTP_TOKEN: the page shows the login QR code")
            front_up.set()

        failed = False
        not_ready: SchemaNotReady | None = None
        front_failed: Exception | None = None  # a port in use: the CLI's one line, after shutdown
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop.cancel_on_signal, tg.cancel_scope)
                if settings.max_sessions is None:
                    for runner in runners:
                        tg.start_soon(runner.driver.prepare)
                        tg.start_soon(keep_session, runner, stack, len(runners) > 1)
                try:
                    await start_front()
                except Exception as exc:
                    front_failed = exc
                    tg.cancel_scope.cancel()
                if settings.max_sessions is not None and front_failed is None:
                    # Claim mode: claims begin once the status page answers (it lists them).
                    tg.start_soon(claimer.run, stack, tg)
        except Exception as exc:
            failed = True
            not_ready = schema_not_ready(exc)
        results: list[bool] = []

        async def shut(runner: SessionRunner) -> None:
            results.append(await runner.shutdown(stop.name, stop.at))

        async with anyio.create_task_group() as tg:
            for runner in runners:
                tg.start_soon(shut, runner)
        await _close_bounded(stack, stop.close_budget(settings))
    if front_failed is not None:
        raise front_failed
    if not_ready is not None:
        raise not_ready  # the CLI's one line: run `sessionkeeper migrate`
    return 1 if failed or not all(results) else 0


def schema_not_ready(exc: BaseException) -> SchemaNotReady | None:
    """The store is missing or behind the code (SESSIONKEEPER_MIGRATE=false, or a role that may
    not migrate): found inside exc, it ends the process with its one line."""
    if isinstance(exc, SchemaNotReady):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := schema_not_ready(inner)) is not None:
                return found
    return None


async def _close_bounded(stack: AsyncExitStack, seconds: float) -> None:
    """Close what the stack holds (pool, webhook, HTTP server, demo site) within seconds:
    a database that stopped answering must not hold the process past its shutdown timeout."""
    with anyio.move_on_after(seconds, shield=True) as scope:
        await stack.aclose()
    if scope.cancelled_caught:
        get_logger().warning("close_timeout", seconds=round(seconds, 1))


async def run_exec(settings: Settings, command: Sequence[str]) -> int:
    """`exec -- CMD`: take the lease, restore, run CMD on the profile with snapshots of it,
    and after CMD ends (by itself or passed a stop signal) the final snapshot; returns CMD's
    exit code (128+N when signal N ended it)."""
    started = time.monotonic()
    bind_session(settings.session_id)
    log = get_logger(session_id=settings.session_id)
    require_database(settings)
    warn_if_unencrypted(settings, log)
    profile = settings.profile_dir.absolute()
    login_key = login_key_for(settings)
    async with AsyncExitStack() as stack:
        demo_site = await stack.enter_async_context(_demo_site(settings))
        # The user's command keeps its environment, but not the vault keys (app/child_env.py).
        env = {**exec_env(), "SESSIONKEEPER_PROFILE_DIR": str(profile),
               "SESSIONKEEPER_SESSION_ID": settings.session_id}
        if demo_site is not None:
            env.setdefault("SESSIONKEEPER_TARGET_URL", demo_url(settings))
        from app.drivers.child import ChildDriver  # noqa: PLC0415

        driver = ChildDriver(command, env, profile, login_key)
        stop = _StopSignal(log)
        _install_signals(stop, log, on_second=driver.kill_now)
        _route_loop_errors()
        runner = SessionRunner(settings, driver, started, Metrics(),
                               await _start_webhook(settings, stack))
        log.info("exec_started", command=list(command), profile=str(profile),
                 login_item=f"{login_key.key} on {login_key.origin}" if login_key else None)
        failed = False
        not_ready: SchemaNotReady | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop.cancel_on_signal, tg.cancel_scope)

                async def serve() -> None:
                    await keep_session(runner, stack, isolate=False)
                    tg.cancel_scope.cancel()  # the child ended by itself

                tg.start_soon(serve)
        except Exception as exc:
            failed = True
            not_ready = schema_not_ready(exc)
        done = await runner.shutdown(stop.name, stop.at)
        await _close_bounded(stack, stop.close_budget(settings))
    if not_ready is not None:
        raise not_ready
    if driver.exit_code is not None and not failed:
        return driver.exit_code
    return 0 if done and not failed else 1

