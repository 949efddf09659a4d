"""A local webhook receiver for tests: a real aiohttp server in a thread of its own.

`mode` says how it answers: "ok" (204), "fail_first" (500 to the first request, then 204) or
"hang" (never answers). Every request body it got is in `received`, in order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from aiohttp import web

from tests.support.daemon import free_port


class WebhookReceiver:
    """Start with `with WebhookReceiver(mode) as receiver:`; `receiver.url` is its address."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[dict[str, Any]] = []
        self.answered: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        assert self._ready.wait(10), "webhook receiver did not start"
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append(json.loads(await request.read()))
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "fail_first" and not self.answered:
            self.answered.append(500)
            return web.Response(status=500, text="not yet")
        self.answered.append(204)
        return web.Response(status=204)

    def wait_for(self, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        """The first body received with those fields, within timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in list(self.received):
                if all(body.get(k) == v for k, v in fields.items()):
                    return body
            time.sleep(0.05)
        raise AssertionError(f"no webhook {fields} within {timeout}s; got {self.received}")
