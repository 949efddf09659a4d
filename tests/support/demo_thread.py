"""The demo site run by a test itself, in a thread with its own event loop.

A daemon whose SESSIONKEEPER_DEMO_PORT is taken serves nothing there and its browser talks to
whatever does (as during a hand-over): so a test can run the site with settings of its own
(short QR or pairing-code lifetimes, modules hidden from the start), drive its screens from
the test, and keep it across daemon restarts (a device revoked while no daemon ran).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from app.demo.server import DemoSite

T = TypeVar("T")


class ThreadedDemoSite:
    """`with ThreadedDemoSite(port, **options) as site:`; `site.call(lambda s: s.link())`."""

    def __init__(self, port: int, **options: Any) -> None:
        self.port = port
        self.options = options
        self.site: DemoSite | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThreadedDemoSite:
        self._thread.start()
        assert self._ready.wait(15), "the demo site did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.site = DemoSite(port=self.port, **self.options)
            await self.site.start()
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.site.stop()

    def call(self, fn: Callable[[DemoSite], T]) -> T:
        """Run fn(site) on the site's own loop (its state is not thread-safe)."""
        assert self.site is not None
        site = self.site

        async def run() -> T:
            return fn(site)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=15)
