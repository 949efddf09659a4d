"""The Chromium a session runs in: launch on the profile, open the target, read login state.

One persistent context per session (Playwright's `launch_persistent_context`). Closing the
context makes Chromium write everything it holds (localStorage, cookies) to the profile.

With CDP on, Chromium also listens for DevTools clients on a loopback port of its choosing
(`--remote-debugging-port=0`; it writes the port to `DevToolsActivePort` in the profile), which
the daemon proxies. A client may open a page of its own on the target (whatsapp-web.js does):
sites like WhatsApp allow one tab per profile, so the browser then follows the newest client
page on the target's origin, closes its own, and reads the login state there, never
navigating, reloading or clicking in a client's page. With no client page left on the origin
it opens its own page again.

Every wait on Chromium and on Playwright's driver is bounded: a close that gets no answer
(the driver is gone or hung) gives up after CLOSE_WAIT_S, and whatever still runs on the profile
is killed, so the folder is left as Chromium left it and nothing writes into it afterwards; a
driver found gone is a crash, and the next launch starts a new one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from app.browser_processes import LaunchedPids, alive, find_launched, kill_browser, kill_driver
from app.child_env import browser_env
from app.child_stderr import stderr_to_log
from app.chromium import CHROMIUM_ARGS, plain_user_agent
from app.errors import ConfigError
from app.login_state import LoginState, Observation
from app.snapshot.local_storage import origin_of
from app.targets import Target, read_page, whatsapp

if TYPE_CHECKING:  # playwright itself loads with the driver's preparation (Browser.prepare)
    from playwright.async_api import BrowserContext, Page, Playwright

__all__ = ["Browser", "BrowserCrashed", "DevTools", "LoginState", "Observation",
           "TargetUnreachable", "remove_singletons"]

GOTO_TIMEOUT_MS = 30_000
DEVTOOLS_FILE = "DevToolsActivePort"
DEVTOOLS_WAIT_S = 10.0
# Chromium's DevTools on loopback only; the daemon's proxy is the way in from outside.
CDP_ARGS = ["--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"]
# Chromium closes in about 0.1 s; a close with no answer after this long will get none.
CLOSE_WAIT_S = 5.0
# Playwright's driver stops at once when asked; after this long it is killed.
DRIVER_STOP_WAIT_S = 3.0
# How long a killed Chromium gets to be gone from the process table.
KILL_WAIT_S = 2.0
DRIVER_GONE = "Playwright's driver is gone"


def playwright_error() -> type[Exception]:
    """Playwright's Error. playwright is imported when its driver is prepared, the first thing
    a boot starts (a third of a second of imports, then the driver process), not with this
    module; every call that may raise this comes after that."""
    from playwright.async_api import Error  # noqa: PLC0415

    return Error


class BrowserCrashed(Exception):
    """Chromium or the page died (not closed by us)."""


class TargetUnreachable(Exception):
    """Chromium runs, but the target page did not load (network, DNS, site down)."""


@dataclass(frozen=True, slots=True)
class DevTools:
    """Where a running Chromium's DevTools endpoint listens (loopback)."""

    port: int
    browser_path: str  # /devtools/browser/<id>, new at every launch

    @property
    def base(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"


def remove_singletons(profile: Path) -> list[str]:
    """Delete Chromium's Singleton* lock files; a stale one from another host blocks launch."""
    removed = []
    if profile.is_dir():
        for path in profile.glob("Singleton*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed


class Browser:
    """A headless Chromium on one profile directory, showing one target."""

    def __init__(self, chromium: Path, profile: Path, target: Target, *,
                 cdp: bool = False) -> None:
        self.chromium = chromium
        self.profile = profile
        self.target = target
        self.cdp = cdp
        self._origin = origin_of(target.url)
        self._playwright: Playwright | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None
        # Pages this browser opened itself; any other page belongs to a DevTools client.
        self._own: list[Page] = []
        self._closing = False
        self.crash_reason: str | None = None
        self.devtools: DevTools | None = None
        # What still says "headless" in our page (user agent or brands), after each launch.
        self.headless_seen: list[str] = []
        self._prepare_lock = anyio.Lock()
        # Chromium's and the driver's pids, noted at each launch (app/browser_processes.py).
        self._pids: LaunchedPids | None = None
        self._driver_pid: int | None = None

    @property
    def running(self) -> bool:
        """True while a context is open."""
        return self._context is not None

    @property
    def browser_pid(self) -> int | None:
        """Chromium's main process while it runs (its memory in /metrics, app/metrics.py)."""
        return self._pids.chromium if self._context is not None and self._pids else None

    @property
    def page(self) -> Page | None:
        """The page the login state is read from while the browser runs."""
        return self._page

    @property
    def following_client(self) -> bool:
        """True while the login is read through a DevTools client's page."""
        return self._page is not None and self._page not in self._own

    def _crashed(self, reason: str) -> None:
        if not self._closing and self.crash_reason is None:
            self.crash_reason = reason

    async def prepare(self) -> Playwright:
        """Start Playwright's driver (about a second before it answers); boot starts it first
        (app/supervisor.py), to come up alongside the rest of the boot and the restore. No
        Chromium process runs before the lease is held and the restore done, not even
        `chromium --version` for the user agent (a hand-over's old owner may still run its
        browser): start() reads that."""
        async with self._prepare_lock:
            if self._playwright is not None and self.driver_gone():
                await self._stop_driver()  # it died: a relaunch needs a new one
            if self._playwright is None:
                from playwright.async_api import async_playwright  # noqa: PLC0415

                with stderr_to_log("playwright.driver"):  # its warnings as JSON lines
                    self._playwright = await async_playwright().start()
            return self._playwright

    def driver_gone(self) -> bool:
        """True once Playwright's driver, seen running at a launch, has exited."""
        return self._driver_pid is not None and not alive(self._driver_pid)

    async def start(self) -> None:
        """Launch Chromium on the profile and open the target."""
        self.profile.mkdir(parents=True, exist_ok=True)
        remove_singletons(self.profile)
        (self.profile / DEVTOOLS_FILE).unlink(missing_ok=True)
        playwright = await self.prepare()
        self._closing = False
        self.crash_reason = None
        self.devtools = None
        agent = await anyio.to_thread.run_sync(plain_user_agent, self.chromium)
        context = await playwright.chromium.launch_persistent_context(
            str(self.profile), executable_path=str(self.chromium), headless=True,
            args=[*CHROMIUM_ARGS, *(CDP_ARGS if self.cdp else []),
                  *([f"--user-agent={agent}"] if agent else [])],
            viewport={"width": 1280, "height": 900},
            # A stable language keeps aria-label selectors stable.
            locale="en-US",
            # No secret of ours in the browser's environment (app/child_env.py).
            env={**browser_env()},
        )
        self._context = context
        context.on("close", lambda _: self._crashed("browser closed"))
        self._pids = await anyio.to_thread.run_sync(find_launched, self.profile)
        if self._pids is not None and self._pids.driver is not None:
            self._driver_pid = self._pids.driver
        if self.cdp:
            self.devtools = await self._read_devtools()
        await self._open_own_page(context.pages[0] if context.pages else None)

    async def _open_own_page(self, page: Page | None = None) -> None:
        """Show the target in a page of our own (the first one at launch, else a new one)."""
        assert self._context is not None
        if page is None:
            page = await self._context.new_page()
        self._own.append(page)
        page.on("crash", lambda _: self._crashed("page crashed"))
        self._page = page
        await self._check_user_agent(page)
        try:
            await page.goto(self.target.url, wait_until="domcontentloaded",
                            timeout=GOTO_TIMEOUT_MS)
        except playwright_error() as exc:
            if self.crash_reason is not None:
                raise BrowserCrashed(self.crash_reason) from None
            raise TargetUnreachable(str(exc).splitlines()[0][:300]) from None

    async def _read_devtools(self) -> DevTools | None:
        """Chromium's DevTools port and browser path, from the file it writes at start."""
        deadline = time.monotonic() + DEVTOOLS_WAIT_S
        path = self.profile / DEVTOOLS_FILE
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                port, browser_path = path.read_text().split()[:2]
                return DevTools(int(port), browser_path)
            await anyio.sleep(0.05)
        return None

    async def _check_user_agent(self, page: Page) -> None:
        """Note what the page reports of itself: a "HeadlessChrome" user agent (the version
        was unknown) or brand makes WhatsApp refuse to show a login."""
        seen: list[str] = await page.evaluate(
            "[navigator.userAgent, ...((navigator.userAgentData || {}).brands || [])"
            ".map((b) => b.brand)]")
        self.headless_seen = [s for s in seen if "headless" in s.lower()]

    def _on_origin(self, page: Page) -> bool:
        try:
            return not page.is_closed() and origin_of(page.url) == self._origin
        except (ConfigError, ValueError):  # about:blank, data: and other non-http pages
            return False

    async def follow_pages(self) -> str | None:
        """Read the login through the newest client page on the target's origin (closing our
        own), or through our own page when there is none. Returns the event to log when the
        page changed: `client_page_followed` or `own_page_opened`."""
        if self._context is None:
            return None
        self._own = [p for p in self._own if not p.is_closed()]
        clients = [p for p in self._context.pages if p not in self._own and self._on_origin(p)]
        if clients:
            newest = clients[-1]
            if newest is self._page:
                return None
            self._page = newest
            own, self._own = self._own, []
            for page in own:  # WhatsApp shows "use here" in the older of two tabs
                with contextlib.suppress(playwright_error()):
                    await page.close()
            return "client_page_followed"
        if self._page is not None and self._page in self._own:
            return None
        await self._open_own_page()
        return "own_page_opened"

    async def observe(self) -> Observation:
        """Read the login state from the page; BrowserCrashed if the browser is gone."""
        if self.crash_reason is not None or self._context is None:
            raise BrowserCrashed(self.crash_reason or "not started")
        if self.driver_gone():
            # Its calls would fail (or wait) for ever, and Chromium went with it.
            raise BrowserCrashed(DRIVER_GONE)
        page = self._page
        if page is None or page.is_closed():
            return Observation(None)  # follow_pages() picks the next one
        try:
            found: dict[str, Any] = await page.evaluate(whatsapp.PROBE_JS,
                                                        self.target.probe_args())
        except playwright_error() as exc:
            if self.crash_reason is not None:
                raise BrowserCrashed(self.crash_reason or str(exc)) from None
            return Observation(None)  # mid-navigation, or the page went: ask again shortly
        return read_page(self.target, found, own_page=not self.following_client)

    async def act(self, action: str, arg: str | None = None) -> str | None:
        """Do something in our own page (never in a client's): `refresh_qr`, `take_over`,
        `reload`, `pairing_code` (arg: the phone number's digits), `forget_logout`. Returns
        how it was done (or the code), None when it could not be."""
        page = self._page
        if page is None or page.is_closed() or self.following_client:
            return None
        scripts = {"refresh_qr": (whatsapp.REFRESH_QR_JS, self.target.qr_reload_selector),
                   "take_over": (whatsapp.TAKE_OVER_JS, self.target.conflict_text),
                   "pairing_code": (whatsapp.PAIRING_CODE_JS, arg),
                   "forget_logout": (whatsapp.FORGET_LOGOUT_JS, None)}
        try:
            if action == "reload":
                await page.reload(wait_until="domcontentloaded", timeout=GOTO_TIMEOUT_MS)
                return "reload"
            script, value = scripts[action]
            result = await (page.evaluate(script, value) if value is not None
                            else page.evaluate(script))
        except playwright_error():
            return None
        return None if result is None else str(result)

    async def close(self, within: float = CLOSE_WAIT_S) -> None:
        """Close the context: Chromium writes what it holds to the profile, then exits. With
        no answer within `within` seconds (the driver is gone or hung), Chromium is killed, and
        so is a driver that did not answer; either way nothing runs on the profile after."""
        self._closing = True
        context, self._context, self._page, self._own = self._context, None, None, []
        self.devtools = None
        pids, self._pids = self._pids, None
        if context is None:
            return
        answered = False
        if not self.driver_gone():
            with anyio.move_on_after(within):
                with contextlib.suppress(playwright_error()):
                    await context.close()
                answered = True
        if pids is not None:
            # Chromium closed: gone at once. Its driver died: Chromium may outlive it.
            await anyio.to_thread.run_sync(kill_browser, pids, self.profile, KILL_WAIT_S)
        if not answered and not self.driver_gone():
            await self._stop_driver(ask=False)  # it does not answer: of no more use

    async def stop(self) -> None:
        """Close the context and the Playwright driver (one still being started, early in a
        boot that a signal cut short, is waited for and stopped too)."""
        await self.close()
        async with self._prepare_lock:
            await self._stop_driver()

    async def _stop_driver(self, *, ask: bool = True) -> None:
        """Stop Playwright's driver: asked first (unless it is known not to answer), killed
        when it has not stopped within DRIVER_STOP_WAIT_S."""
        playwright, self._playwright = self._playwright, None
        driver, self._driver_pid = self._driver_pid, None
        if playwright is None:
            return
        if not ask and driver is not None:
            kill_driver(driver)
        with anyio.move_on_after(DRIVER_STOP_WAIT_S) as scope:
            with contextlib.suppress(playwright_error(), OSError):
                await playwright.stop()
        if scope.cancelled_caught and driver is not None:
            kill_driver(driver)
            with anyio.move_on_after(KILL_WAIT_S):
                with contextlib.suppress(playwright_error(), OSError):
                    await playwright.stop()
