"""The operator page locked down (issue 13 item 4): a QR code links whoever scans it into this
browser, so it is not shown, served or logged to just anyone.

The page tests run the real aiohttp application of app/http.py with a real StatusBoard (no
sessions: the page's own behaviour does not depend on them); the log tests run a real daemon
on the demo target with a real PostgreSQL and a real webhook receiver.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, async_playwright

from app.chromium import CHROMIUM_ARGS, find_chromium
from app.http import build_app
from app.log import configure_logging, get_logger, register_secret
from app.qr import log_qr
from app.settings import load_settings
from app.status import StatusBoard
from app.webhook import Webhook
from tests.support.daemon import DAEMON_SESSION, Daemon
from tests.support.webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent


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


DB_PASSWORD = "Zq9xK-db-password-7f3a"
HOOK_SECRET = "hook-secret-b81c0e5d"


def _with_password(database_url: str, password: str) -> str:
    """The test database's URL with a password in it (the local server trusts the user and
    ignores it; a real one would check it)."""
    parts = urlsplit(database_url)
    if not parts.username or parts.password is not None:
        pytest.skip("the test database URL has no user to add a password to")
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{host}"))


def test_a_daemon_run_logs_no_secret_and_no_qr_code(start: Callable[..., Daemon],
                                                    database_url: str) -> None:
    """A real daemon with a token, a database password and a webhook URL carrying a secret;
    stdout is a pipe and SESSIONKEEPER_LOG_QR is unset. Its whole JSON log and every webhook
    body are searched for each secret and for the QR payload."""
    with WebhookReceiver("ok") as receiver:
        hook = f"{receiver.url}?key={HOOK_SECRET}"
        daemon = start(DATABASE_URL=_with_password(database_url, DB_PASSWORD),
                       SESSIONKEEPER_HTTP_TOKEN=TOKEN, SESSIONKEEPER_WEBHOOK_URL=hook,
                       SESSIONKEEPER_LOG_QR="")  # empty counts as unset
        shown = daemon.wait_for("qr_required", 60)
        assert shown["qr_logged"] is False and "qr_payload" not in shown
        base = f"http://127.0.0.1:{daemon.port}"
        raw = urllib.request.Request(f"{base}/qr/{DAEMON_SESSION}?format=raw",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(raw, timeout=10) as r:
            payload = r.read().decode()
        assert payload.startswith("2@")
        with urllib.request.urlopen(f"{base}/api/sessions?token={TOKEN}", timeout=10) as r:
            assert r.status == 200
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(40) == 0
        deadline = time.monotonic() + 10
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        bodies = json.dumps(receiver.received)
    log = "\n".join(daemon.raw)
    assert "shutdown_completed" in daemon.names()
    assert receiver.received, "no webhook body to search"
    assert all("qr_payload" not in e for e in daemon.events)
    for secret in (TOKEN, DB_PASSWORD, HOOK_SECRET, payload):
        assert secret not in log, secret
        assert secret not in bodies, secret


@pytest.mark.anyio
async def test_webhook_bodies_are_redacted() -> None:
    register_secret(TOKEN)
    with WebhookReceiver("ok") as receiver:
        webhook = Webhook(f"{receiver.url}?key={HOOK_SECRET}", 2.0, backoff=0.05)
        await webhook.start()
        try:
            webhook.send({"event": "snapshot_failed", "session_id": "s1",
                          "reason": f"rejected: Bearer {TOKEN} at {receiver.url}?key="
                                    f"{HOOK_SECRET}", "nested": [{"why": TOKEN}]})
        finally:
            await webhook.stop(drain=5)
    [body] = receiver.received
    text = json.dumps(body)
    assert TOKEN not in text and HOOK_SECRET not in text
    assert body["reason"].startswith("rejected: Bearer ***") and body["nested"] == [{"why": "***"}]


def test_cli_error_line_masks_the_database_password(daemon_env: dict[str, str]) -> None:
    """A password with an unescaped '/' is cut short by the URL parser, and the cut-off part
    was quoted in the error line as a port."""
    env = {**daemon_env, "DATABASE_URL": "postgresql://u:Zq9xK/rest-of-it@127.0.0.1:5432/db"}
    done = subprocess.run([sys.executable, "-m", "app", "sessions"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and done.stderr.startswith("sessionkeeper: error:"), done.stderr
    assert "Zq9xK" not in done.stderr and "rest-of-it" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_deploy_files_set_a_token() -> None:
    """render.yaml generates the token; the README's Railway steps set one."""
    blueprint = (ROOT / "render.yaml").read_text()
    assert re.search(r"- key: SESSIONKEEPER_HTTP_TOKEN\n\s+generateValue: true\n", blueprint)
    railway = (ROOT / "README.md").read_text().split("### Railway", 1)[1].split("### Render")[0]
    assert "SESSIONKEEPER_HTTP_TOKEN=${{ secret(32) }}" in railway


@pytest.mark.anyio
async def test_page_opened_from_a_link_on_another_site() -> None:
    """An operator taps the page's link in a chat or a mail: a cross-site navigation, on which
    the browser withholds a SameSite=Strict cookie (also after the 303). The page loads itself
    again from its own origin once; a visitor without the cookie still gets 401, no loop."""
    server = await _page_app()
    try:
        here, other = (f"http://{host}:{server.port}" for host in ("127.0.0.1", "localhost"))

        async def follow(page: Page, url: str) -> list[tuple[str, int]]:
            seen: list[tuple[str, int]] = []
            page.on("response", lambda r: seen.append((r.url, r.status)))
            await page.goto(f"{other}/healthz")  # another site: localhost is not 127.0.0.1
            await page.evaluate("""(url) => { const a = document.createElement("a");
                a.href = url; document.body.appendChild(a); a.click(); }""", url)
            await page.wait_for_timeout(1500)
            return [s for s in seen if not s[0].startswith(other)]

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(find_chromium(None)),
                                               headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                seen = await follow(page, f"{here}/?token={TOKEN}")
                assert page.url == f"{here}/"
                assert (f"{here}/", 200) in seen and (f"{here}/api/sessions", 200) in seen
                context = await browser.new_context()  # a context of its own: no cookie
                stranger = await context.new_page()
                seen = await follow(stranger, f"{here}/")
                assert seen == [(f"{here}/", 200), (f"{here}/", 401)], seen
            finally:
                await browser.close()
    finally:
        await server.close()
