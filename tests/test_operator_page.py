"""The operator page locked down (issue 13 item 4): a QR code links whoever scans it into this
browser, so it is not shown, served or logged to just anyone.

The page tests run the real aiohttp application of app/http.py with a real StatusBoard (no
sessions: the page's own behaviour does not depend on them); the log tests run a real daemon
on the demo target with a real PostgreSQL and a real webhook receiver.
"""

from __future__ import annotations

import io
import json
import sys

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright

from app.chromium import CHROMIUM_ARGS, find_chromium
from app.http import build_app
from app.log import configure_logging, get_logger
from app.qr import log_qr
from app.settings import load_settings
from app.status import StatusBoard


def test_log_qr_defaults_to_off_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIONKEEPER_LOG_QR", raising=False)

    class Pipe(io.StringIO):
        def isatty(self) -> bool:
            return False

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Pipe())
    assert load_settings().log_qr is False
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert load_settings().log_qr is True
    monkeypatch.setattr(sys, "stdout", Pipe())
    monkeypatch.setenv("SESSIONKEEPER_LOG_QR", "true")  # explicit true still logs it
    assert load_settings().log_qr is True
    monkeypatch.setenv("SESSIONKEEPER_LOG_QR", "false")
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert load_settings().log_qr is False

    # What the default means for a log line: no payload in JSON.
    monkeypatch.delenv("SESSIONKEEPER_LOG_QR")
    monkeypatch.setattr(sys, "stdout", Pipe())
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        log_qr(get_logger(session_id="s1"), "qr_required", "2@payload", load_settings().log_qr)
        log_qr(get_logger(session_id="s1"), "qr_rotated", "2@explicit",
               load_settings(log_qr="true").log_qr)
    finally:
        configure_logging("info", "json")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[0]["event"] == "qr_required" and "qr_payload" not in lines[0]
    assert lines[1]["qr_payload"] == "2@explicit"


TOKEN = "operator-token-0123456789abcdef"


async def _page_app() -> TestServer:
    board = StatusBoard([], owner="host-1", claim_mode=False, pool=lambda: None)
    server = TestServer(build_app(lambda: {"ready": False}, board, token=TOKEN),
                        host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.anyio
async def test_page_token_is_exchanged_for_a_cookie() -> None:
    server = await _page_app()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{base}/") as r:
                assert r.status == 401
            async with http.get(f"{base}/?token=wrong-token-0123456789") as r:
                assert r.status == 401 and "Set-Cookie" not in r.headers
            # The token in the URL: one 303 to the same URL without it, and the cookie.
            async with http.get(f"{base}/?a=1&token={TOKEN}&b=2",
                                allow_redirects=False) as r:
                assert r.status == 303
                assert r.headers["Location"] == "/?a=1&b=2"
                cookie = r.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert "Secure" not in cookie and TOKEN not in cookie
                assert r.headers["Cache-Control"] == "no-store"
            async with http.get(f"{base}/?token={TOKEN}", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/"
            # From now on the cookie alone: the page, its script and its API requests.
            async with http.get(f"{base}/") as r:
                html = await r.text()
                assert r.status == 200 and TOKEN not in html and "token" not in html
                csp = r.headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
                assert "'unsafe-inline'" not in csp and "<script>" not in html
                assert r.headers["X-Frame-Options"] == "DENY"
            for path in ("/api/sessions", "/static/status.js", "/static/status.css"):
                async with http.get(f"{base}{path}") as r:
                    assert r.status == 200, path
                    assert TOKEN not in await r.text(), path
        # Without the cookie: the API still takes a bearer header or ?token= (no redirect).
        async with aiohttp.ClientSession() as bare:
            async with bare.get(f"{base}/api/sessions") as r:
                assert r.status == 401
            async with bare.get(f"{base}/api/sessions",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
            async with bare.get(f"{base}/api/sessions?token={TOKEN}",
                                allow_redirects=False) as r:
                assert r.status == 200
            async with bare.get(f"{base}/", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
            async with bare.get(f"{base}/", headers={"Cookie": "sessionkeeper_auth=forged"}) as r:
                assert r.status == 401
            # Behind a TLS proxy the cookie is Secure.
            async with bare.get(f"{base}/?token={TOKEN}", allow_redirects=False,
                                headers={"X-Forwarded-Proto": "https"}) as r:
                assert r.status == 303 and "Secure" in r.headers["Set-Cookie"]
    finally:
        await server.close()


@pytest.mark.anyio
async def test_page_in_a_browser_drops_the_token_from_the_address_bar() -> None:
    server = await _page_app()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(find_chromium(None)),
                                               headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                requests: list[str] = []
                page.on("request", lambda req: requests.append(req.url))
                failed: list[str] = []
                page.on("console", lambda msg: failed.append(msg.text)
                        if msg.type == "error" else None)
                await page.goto(f"{base}/?token={TOKEN}")
                assert page.url == f"{base}/"
                # The script polls /api/sessions with the cookie alone.
                async with page.expect_response(lambda r: r.url.endswith("/api/sessions")) as rr:
                    pass
                assert (await rr.value).status == 200
                assert not failed, failed  # no CSP violation, no 401
                assert all(TOKEN not in url for url in requests[1:])
            finally:
                await browser.close()
    finally:
        await server.close()
