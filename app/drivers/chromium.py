"""`run`: our own headless Chromium holds the profile; the login state is read from its page."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from app.browser import Browser, BrowserCrashed, DevTools, TargetUnreachable, playwright_error
from app.drivers.base import SessionHost
from app.login_state import KNOWN, LoginState
from app.snapshot.local_storage import LoginKey
from app.targets import Target

OBSERVE_EVERY = 0.5
OBSERVE_FIRST = 0.1
# A page that has just loaded and says `connecting` is about to say more (ready, a QR code):
# read quickly that long, so `ready` follows the page's own within a tenth of a second.
CONNECTING_QUICKLY_S = 15.0
# A browser that ran this long before it crashed had a new incident: back off from 1 s again.
STABLE_S = 300.0
# A reading of the page that takes longer than this means the renderer hangs.
OBSERVE_TIMEOUT_S = 20.0
# The longest a close of a crashed or hung Chromium is waited for before relaunching.
CLOSE_TIMEOUT_S = 10.0


class ChromiumDriver:
    """Launches Chromium on the profile, watches the page, relaunches it with backoff."""

    name = "chromium"

    def __init__(self, chromium: Path, profile: Path, target: Target, *,
                 cdp: bool = False, launch_after: anyio.Event | None = None) -> None:
        self.browser = Browser(chromium, profile, target, cdp=cdp)
        # The first launch waits for it: set once the daemon's demo site and HTTP server
        # answer (they start alongside the session's restore).
        self.launch_after = launch_after
        self.ran = False
        self.login_key: LoginKey | None = None

    @property
    def reads_page(self) -> bool:
        """The login state comes from the page."""
        return True

    @property
    def browser_pid(self) -> int | None:
        """Chromium's main process while it runs, for the memory metric."""
        return self.browser.browser_pid

    @property
    def devtools(self) -> DevTools | None:
        """Chromium's DevTools endpoint while it runs with CDP on."""
        return self.browser.devtools if self.browser.running else None

    async def prepare(self) -> None:
        """Start Playwright's driver."""
        await self.browser.prepare()

    async def run(self, host: SessionHost) -> int | None:
        """Run Chromium and watch the login; relaunch with backoff when it crashes."""
        delay = 1.0
        crashed = False
        if self.launch_after is not None:
            await self.launch_after.wait()
        while True:
            launched = time.monotonic()
            try:
                await self.browser.start()
                if crashed:
                    host.log.info("browser_restarted", reason="crash",
                                  cdp=self.browser.devtools is not None)
                self.ran = True
                host.log.info("browser_started", url=self.browser.target.url,
                              since_start_ms=host.since_start_ms())
                if self.browser.headless_seen:
                    host.log.warning("user_agent_headless", seen=self.browser.headless_seen)
                await self.watch(host)
            except TargetUnreachable as exc:
                host.log.warning("target_unreachable", url=self.browser.target.url,
                                 reason=str(exc), retry_in_s=delay)
            except (BrowserCrashed, playwright_error()) as exc:
                if time.monotonic() - launched > STABLE_S:
                    delay = 1.0
                host.log.error("browser_crashed", reason=str(exc).splitlines()[0][:300],
                               retry_in_s=delay)
                crashed = True
            with anyio.move_on_after(CLOSE_TIMEOUT_S):  # a hung Chromium may not answer
                await self.browser.close()
            host.reset_login()
            await anyio.sleep(delay)
            delay = min(delay * 2, 60.0)

    async def watch(self, host: SessionHost) -> None:
        """Poll the page for its login state until the browser goes away (quickly until the
        state is known and while a fresh page connects, so a restored session reports ready
        without delay)."""
        loaded = time.monotonic()
        while True:
            moved = await self.browser.follow_pages()
            if moved is not None:
                host.log.info(moved, url=self.browser.page.url if self.browser.page else None)
                host.page_changed()
                loaded = time.monotonic()
            # A renderer that hangs answers nothing: that is a crash, not a wait.
            try:
                with anyio.fail_after(OBSERVE_TIMEOUT_S):
                    seen = await self.browser.observe()
            except TimeoutError:
                raise BrowserCrashed(f"the page did not answer within {OBSERVE_TIMEOUT_S:.0f} s "
                                     "(a hung renderer)") from None
            # Unrecognised readings count too: a screen nothing knows becomes `unknown`.
            await host.on_observation(seen)
            await anyio.sleep(observe_delay(host.state, time.monotonic() - loaded))

    async def act(self, action: str, arg: str | None = None) -> str | None:
        """Do something in our own page (never a client's)."""
        return await self.browser.act(action, arg)

    async def pause(self) -> None:
        """Close Chromium: it writes everything it holds (cookies, localStorage) at once."""
        await self.browser.close()

    async def resume(self, host: SessionHost) -> None:
        """Launch again after a checkpoint; attached DevTools clients must reconnect."""
        host.page_changed()
        await self.browser.start()
        host.log.info("browser_restarted", reason="checkpoint",
                      cdp=self.browser.devtools is not None)

    async def stop(self, signal_name: str | None, within: float) -> None:
        """Close Chromium before the final snapshot."""
        await self.browser.close()

    async def abandon(self) -> None:
        """Close Chromium; the lifecycle writes nothing after a lost lease."""
        await self.browser.close()

    async def close(self) -> None:
        """Close Chromium and Playwright's driver."""
        await self.browser.stop()


def observe_delay(state: LoginState, since_load: float) -> float:
    """Seconds until the next reading of the page: quickly while nothing is known, and while
    a page loaded less than CONNECTING_QUICKLY_S ago connects; then every OBSERVE_EVERY."""
    if state not in KNOWN:
        return OBSERVE_FIRST
    if state is LoginState.CONNECTING and since_load < CONNECTING_QUICKLY_S:
        return OBSERVE_FIRST
    return OBSERVE_EVERY
