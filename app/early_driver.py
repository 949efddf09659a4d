"""Playwright's driver, spawned before the daemon's own imports.

From process spawn to `ready` is what a container restart waits through, and Playwright's
Node.js driver takes about a second to answer once spawned. `sessionkeeper run` therefore
creates its event loop first (app/entry.py), imports Playwright and spawns the driver in it,
and only then imports the CLI, the settings, the vault and the rest: the driver boots in its
own process meanwhile. The first browser to prepare takes it (app/browser.py); a run that
ends before any browser did (bad settings, claim mode with nothing to claim) stops it.

The loop is handed over to the command: `run()` runs the daemon's coroutine in it, as
`anyio.run` would have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from app.child_stderr import LineContext, stderr_to_log

if TYPE_CHECKING:
    from playwright.async_api import Playwright

T = TypeVar("T")

# Turns of the loop given to the start before the imports go on: Playwright's start reaches
# the driver's spawn (a synchronous Popen) within its first few steps.
SPAWN_TURNS = 20
STOP_TIMEOUT_S = 10.0

_current: list[EarlyDriver] = []  # the one this process began


class EarlyDriver:
    """An event loop with Playwright's start under way in it."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._start: asyncio.Task[Playwright] | None = None
        self._lines: LineContext | None = None
        self._taken = False

    def spawn(self) -> None:
        """Import Playwright and run the loop until its driver process is spawned."""
        self._runner.run(self._spawn())

    async def _spawn(self) -> None:
        from playwright.async_api import async_playwright  # noqa: PLC0415

        # The driver's stderr goes to the log (app/child_stderr.py) from its first line; the
        # block stays open until the start is complete, whenever the spawn happens.
        stack = contextlib.ExitStack()
        self._lines = stack.enter_context(stderr_to_log("playwright.driver"))
        self._start = asyncio.ensure_future(async_playwright().start())
        self._start.add_done_callback(lambda _: stack.close())
        for _ in range(SPAWN_TURNS):
            await asyncio.sleep(0)

    def take(self) -> asyncio.Task[Playwright] | None:
        """The start under way, once (the first browser to prepare uses it); the driver's
        stderr lines are logged in the caller's context (its session) from now on."""
        if self._taken or self._start is None:
            return None
        self._taken = True
        if self._lines is not None:
            self._lines.adopt()
        return self._start

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run the command's coroutine in this loop."""
        return self._runner.run(coroutine)

    def close(self) -> None:
        """Stop the driver unless a browser took it, then close the loop."""
        try:
            if self._start is not None and not self._taken:
                self._taken = True
                self._runner.run(_stop(self._start))
        finally:
            self._runner.close()


async def _stop(start: asyncio.Task[Playwright]) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(STOP_TIMEOUT_S):
            playwright = await start
            await playwright.stop()
    start.cancel()


def begin() -> EarlyDriver:
    """Create the loop and spawn the driver; `take()` hands it out."""
    early = EarlyDriver()
    _current[:] = [early]
    early.spawn()
    return early


def take() -> asyncio.Task[Playwright] | None:
    """The early driver's start, once, if this process began one."""
    return _current[0].take() if _current else None
