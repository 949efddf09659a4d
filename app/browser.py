"""The Chromium a session runs in: launch on the profile, open the target, read login state.

One persistent context per session (Playwright's `launch_persistent_context`). Closing the
context makes Chromium write everything it holds (localStorage, cookies) to the profile.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
from playwright.async_api import BrowserContext, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from app.chromium import CHROMIUM_ARGS
from app.targets import Target

GOTO_TIMEOUT_MS = 30_000

# Runs in the page: the first visible match wins, ready before QR before logged out.
_OBSERVE_JS = """
([qr, ready, out, attr, outUrl]) => {
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
  const find = (sel) => {
    if (!sel) return null;
    try {
      for (const el of document.querySelectorAll(sel)) if (visible(el)) return el;
    } catch (e) { return null; }
    return null;
  };
  if (find(ready)) return {state: "ready", payload: null};
  const q = find(qr);
  if (q) {
    let el = q, payload = null;
    while (el && el.nodeType === 1) {
      if (attr && el.hasAttribute(attr)) { payload = el.getAttribute(attr); break; }
      el = el.parentElement;
    }
    if (payload === null) payload = (q.textContent || "").trim() || null;
    // After a logout some sites (WhatsApp: ?post_logout=1) show the QR page again.
    const out = !!outUrl && location.href.includes(outUrl);
    return {state: out ? "logged_out" : "qr", payload: payload};
  }
  if (find(out)) return {state: "logged_out", payload: null};
  return {state: "unknown", payload: null};
}
"""


class LoginState(StrEnum):
    """What the session looks like from outside."""

    STARTING = "starting"
    WAITING_FOR_LEASE = "waiting_for_lease"
    RESTORING = "restoring"
    QR_REQUIRED = "qr_required"
    READY = "ready"
    LOGGED_OUT = "logged_out"


@dataclass(frozen=True, slots=True)
class Observation:
    """One reading of the page: a state (None: not recognisable yet) and the QR payload."""

    state: LoginState | None
    qr_payload: str | None = None


class BrowserCrashed(Exception):
    """Chromium or the page died (not closed by us)."""


class TargetUnreachable(Exception):
    """Chromium runs, but the target page did not load (network, DNS, site down)."""


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

    def __init__(self, chromium: Path, profile: Path, target: Target) -> None:
        self.chromium = chromium
        self.profile = profile
        self.target = target
        self._playwright: Playwright | None = None
        self._context: BrowserContext | None = None
        self._page: Page | None = None
        self._closing = False
        self.crash_reason: str | None = None
        self._prepare_lock = anyio.Lock()

    @property
    def running(self) -> bool:
        """True while a context is open."""
        return self._context is not None

    @property
    def page(self) -> Page | None:
        """The target's page while the browser runs."""
        return self._page

    def _crashed(self, reason: str) -> None:
        if not self._closing and self.crash_reason is None:
            self.crash_reason = reason

    async def prepare(self) -> Playwright:
        """Start Playwright's driver (about half a second); boot runs it alongside restore."""
        async with self._prepare_lock:
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            return self._playwright

    async def start(self) -> None:
        """Launch Chromium on the profile and open the target."""
        self.profile.mkdir(parents=True, exist_ok=True)
        remove_singletons(self.profile)
        playwright = await self.prepare()
        self._closing = False
        self.crash_reason = None
        context = await playwright.chromium.launch_persistent_context(
            str(self.profile), executable_path=str(self.chromium), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 900},
            # A stable language keeps aria-label selectors stable.
            locale="en-US",
        )
        self._context = context
        context.on("close", lambda _: self._crashed("browser closed"))
        page = context.pages[0] if context.pages else await context.new_page()
        page.on("crash", lambda _: self._crashed("page crashed"))
        page.on("close", lambda _: self._crashed("page closed"))
        self._page = page
        await self._plain_user_agent(context, page)
        try:
            await page.goto(self.target.url, wait_until="domcontentloaded",
                            timeout=GOTO_TIMEOUT_MS)
        except PlaywrightError as exc:
            if self.crash_reason is not None:
                raise BrowserCrashed(self.crash_reason) from None
            raise TargetUnreachable(str(exc).splitlines()[0][:300]) from None

    async def _plain_user_agent(self, context: BrowserContext, page: Page) -> None:
        """Headless Chromium says "HeadlessChrome"; some sites (WhatsApp) then refuse to
        show a login. Present the same version as plain Chrome."""
        agent: str = await page.evaluate("navigator.userAgent")
        if "HeadlessChrome" in agent:
            cdp = await context.new_cdp_session(page)
            await cdp.send("Emulation.setUserAgentOverride",
                           {"userAgent": agent.replace("HeadlessChrome", "Chrome"),
                            "acceptLanguage": "en-US,en"})

    async def observe(self) -> Observation:
        """Read the login state from the page; BrowserCrashed if the browser is gone."""
        if self.crash_reason is not None or self._page is None:
            raise BrowserCrashed(self.crash_reason or "not started")
        t = self.target
        try:
            found: dict[str, Any] = await self._page.evaluate(
                _OBSERVE_JS, [t.qr_selector, t.ready_selector, t.logged_out_selector,
                              t.qr_attribute, t.logged_out_url])
        except PlaywrightError as exc:
            if self.crash_reason is not None or self._page.is_closed():
                raise BrowserCrashed(self.crash_reason or str(exc)) from None
            return Observation(None)  # mid-navigation: ask again shortly
        state = {"ready": LoginState.READY, "qr": LoginState.QR_REQUIRED,
                 "logged_out": LoginState.LOGGED_OUT}.get(found.get("state", ""))
        return Observation(state, found.get("payload"))

    async def close(self) -> None:
        """Close the context: Chromium writes what it holds to the profile, then exits."""
        self._closing = True
        context, self._context, self._page = self._context, None, None
        if context is not None:
            with contextlib.suppress(PlaywrightError):
                await context.close()

    async def stop(self) -> None:
        """Close the context and the Playwright driver."""
        await self.close()
        if self._playwright is not None:
            with contextlib.suppress(PlaywrightError, OSError):
                await self._playwright.stop()
            self._playwright = None
