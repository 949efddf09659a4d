"""Details of the platforms: the HTTP server on IPv4 and IPv6 (Railway's private network is
IPv6 only), and the Render Blueprint's service and database in one region."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import anyio
import pytest

from app.http import HttpServer, build_app
from tests.support.daemon import free_port

ROOT = Path(__file__).resolve().parent.parent


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        body: bytes = r.read()
        return body


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 on this machine (::1 cannot be bound)")
@pytest.mark.anyio
async def test_http_answers_on_ipv4_and_ipv6() -> None:
    port = free_port()
    server = HttpServer(build_app(lambda: {"ready": True}), port)
    await server.start()
    try:
        for host in ("127.0.0.1", "[::1]"):
            body = await anyio.to_thread.run_sync(_get, f"http://{host}:{port}/healthz")
            assert body == b'{"status": "alive"}', host
    finally:
        await server.stop()
    assert server.bound == ["0.0.0.0", "::"]


@pytest.mark.anyio
async def test_a_machine_without_ipv6_still_serves_ipv4(monkeypatch: pytest.MonkeyPatch) -> None:
    """'::' that cannot be bound (no IPv6 in the kernel) is skipped, IPv4 still serves."""
    import errno

    from aiohttp import web

    real_start = web.TCPSite.start

    async def no_ipv6(site: web.TCPSite) -> None:
        if ":" in str(site._host):
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        await real_start(site)

    monkeypatch.setattr(web.TCPSite, "start", no_ipv6)
    port = free_port()
    server = HttpServer(build_app(lambda: {"ready": True}), port)
    await server.start()
    try:
        body = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/healthz")
        assert body == b'{"status": "alive"}'
    finally:
        await server.stop()
    assert server.bound == ["0.0.0.0"]


def test_render_service_and_database_share_a_region() -> None:
    """One `region:` in the web service and one in the database, the same (no YAML parser
    among the dependencies: the Blueprint's two top-level lists are split by hand)."""
    text = (ROOT / "render.yaml").read_text()
    services, databases = text.split("\ndatabases:\n")
    regions = [re.findall(r"^\s+region:\s*(\S+)", part, re.MULTILINE)
               for part in (services, databases)]
    assert len(regions[0]) == 1 and regions[0] == regions[1], regions


def test_readme_warns_about_transaction_poolers() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "render.com/deploy?repo=" in readme  # the Deploy to Render button
    for word in ("PgBouncer", "transaction mode", "advisory lock", "prepared statement",
                 "direct"):
        assert word in readme, word
