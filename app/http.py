"""HTTP on PORT: /healthz (the process is alive) and /readyz (the session's state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

StatusFn = Callable[[], dict[str, Any]]


def build_app(status: StatusFn) -> web.Application:
    """The aiohttp application; status() returns the session's current facts."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"}, headers={"Cache-Control": "no-store"})

    async def readyz(_: web.Request) -> web.Response:
        facts = status()
        code = 200 if facts.get("ready") else 503
        return web.json_response(facts, status=code, headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class HttpServer:
    """Runs the app on host:port until stopped."""

    def __init__(self, status: StatusFn, host: str, port: int) -> None:
        self._runner = web.AppRunner(build_app(status), access_log=None)
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Bind and serve."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()
