"""/cdp/{session}: automation clients attach to the kept Chromium through the daemon's port.

Real daemon, real Chromium, real PostgreSQL; the clients are Playwright (Python) and, where
node is installed, Puppeteer (puppeteer-core from the npm registry).
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from tests.support.daemon import DAEMON_SESSION, Daemon, link_demo, login
from tests.support.node import npm_packages, run_node
from tests.support.vault_db import generations, inspect_generation
from tests.support.webhook_receiver import WebhookReceiver

TOKEN = "cdp-test-token-0123456789"
SESSION = DAEMON_SESSION
ADD_MESSAGE = """
async (n) => {
  const db = await new Promise((resolve, reject) => {
    const req = indexedDB.open("demo-chat", 1);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const tx = db.transaction("messages", "readwrite");
  tx.objectStore("messages").add({n, text: "sent by a bot through /cdp", at: Date.now()});
  await new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onerror = reject; });
  return n;
}
"""


@pytest.fixture
def demo_message_rate() -> str:
    return "0"  # only the clients write: their messages are the ones to find


def cdp_url(daemon: Daemon, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{daemon.port}/cdp/{SESSION}"


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        return err.code, json.loads(body) if body.startswith(b"{") else body


def attach(pw: Playwright, daemon: Daemon) -> Browser:
    return pw.chromium.connect_over_cdp(cdp_url(daemon),
                                        headers={"Authorization": f"Bearer {TOKEN}"})


def demo_state(browser: Browser) -> str:
    page = browser.contexts[0].pages[0]
    state: str = page.evaluate("document.body.dataset.state")
    return state


def test_a_bot_attaches_reads_and_writes_through_cdp(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
        tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start(SESSIONKEEPER_CDP="true", SESSIONKEEPER_HTTP_TOKEN=TOKEN)
    login(daemon, demo_port)
    daemon.wait_for("browser_restarted", 30, reason="checkpoint")
    # Without the token, or with a wrong one: refused, the WebSocket too.
    assert http_get(f"{cdp_url(daemon)}/json/version")[0] == 401
    assert http_get(f"{cdp_url(daemon)}/json/version",
                    {"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    code, version = http_get(f"{cdp_url(daemon)}/json/version?token={TOKEN}")
    assert code == 200 and version["Browser"].startswith(("Chrome/", "HeadlessChrome/"))
    ws = version["webSocketDebuggerUrl"]
    assert ws.startswith(f"ws://127.0.0.1:{daemon.port}/cdp/{SESSION}/devtools/browser/")
    assert ws.endswith(f"?token={TOKEN}")  # a query token is carried to the WebSocket
    with sync_playwright() as pw:
        with pytest.raises(Exception, match="401"):
            pw.chromium.connect_over_cdp(ws.split("?")[0])
        browser = attach(pw, daemon)
        assert len(browser.contexts) == 1  # the kept profile's context, not a new one
        page = browser.contexts[0].pages[0]
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=20000)
        info = page.evaluate("window.demoInspect()")
        assert info["state"] == "ready" and info["hasCreds"]
        assert page.evaluate(ADD_MESSAGE, 8128) == 8128
        browser.close()  # a CDP client's close() disconnects; the kept browser stays
    daemon.wait_for("cdp_client_disconnected", 10, by="client")
    assert daemon.readyz()[0] == 200
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
    final = daemon.wait_for("shutdown_completed")
    assert final["changed"] and generations(database_url)[-1]["generation"] == final["generation"]
    seen = inspect_generation(database_url, final["generation"], tmp_path / "g", demo_port)
    assert seen["state"] == "ready" and seen["lastMessage"] == 8128


def test_a_client_tab_is_followed_never_fought(start: Callable[..., Daemon],
                                               daemon_env: dict[str, str]) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start(SESSIONKEEPER_CDP="true", SESSIONKEEPER_HTTP_TOKEN=TOKEN)
    login(daemon, demo_port)
    daemon.wait_for("browser_restarted", 30, reason="checkpoint")
    with sync_playwright() as pw:
        browser = attach(pw, daemon)
        context = browser.contexts[0]
        ours = context.pages[0]
        # As whatsapp-web.js does with browserWSEndpoint: a page of its own, on the target.
        tab = context.new_page()
        tab.goto(f"http://127.0.0.1:{demo_port}/")
        tab.wait_for_function("document.body.dataset.state === 'ready'", timeout=20000)
        tab.evaluate("window.__boundToThisLoad = 42")
        followed = daemon.wait_for("client_page_followed", 10)
        assert followed["url"].startswith(f"http://127.0.0.1:{demo_port}")
        deadline = time.monotonic() + 10
        while not ours.is_closed() and time.monotonic() < deadline:
            tab.wait_for_timeout(100)  # (the sync API takes in events only while called)
        assert ours.is_closed() and context.pages == [tab]  # one tab per profile
        for _ in range(6):  # several observation rounds: still ready, the tab untouched
            tab.wait_for_timeout(500)
            assert daemon.readyz()[1]["state"] == "ready"
        assert tab.evaluate("window.__boundToThisLoad") == 42  # never reloaded or navigated
        assert tab.evaluate("document.body.dataset.state") == "ready"
        assert "state_changed" not in daemon.names()[daemon.names().index("client_page_followed"):]
        # The bot's tab goes: the daemon shows the target in a page of its own again.
        tab.close()
        reopened = daemon.wait_for("own_page_opened", 10)
        assert reopened["url"].startswith(f"http://127.0.0.1:{demo_port}")
        browser.close()
    deadline = time.monotonic() + 20  # the new page connects, then syncs
    while daemon.readyz()[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.readyz()[0] == 200
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0


def test_clients_reconnect_after_a_checkpoint_at_the_same_url(
        start: Callable[..., Daemon], daemon_env: dict[str, str]) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with WebhookReceiver() as receiver:
        daemon = start(SESSIONKEEPER_CDP="true", SESSIONKEEPER_HTTP_TOKEN=TOKEN,
                       SESSIONKEEPER_WEBHOOK_URL=receiver.url)
        daemon.wait_for("qr_required", 60)
        with sync_playwright() as pw:
            before = attach(pw, daemon)
            assert demo_state(before) == "qr"
            assert link_demo(demo_port)["linked"]
            daemon.wait_for("login_checkpoint", 30)
            # Chromium closed for the checkpoint: the proxy closed the client's socket.
            daemon.wait_for("cdp_client_disconnected", 10, by="browser")
            restarted = daemon.wait_for("browser_restarted", 30, reason="checkpoint")
            deadline = time.monotonic() + 10
            while before.is_connected() and time.monotonic() < deadline:
                pw.request.new_context().dispose()  # a round trip: takes in pending events
            assert not before.is_connected()
            hook = receiver.wait_for(10, event="browser_restarted")
            assert hook["reason"] == "checkpoint" and hook["session_id"] == SESSION
            after = attach(pw, daemon)  # the same URL
            page = after.contexts[0].pages[0]
            assert page.url.startswith(f"http://127.0.0.1:{demo_port}") and restarted["cdp"]
            page.wait_for_function("document.body.dataset.state === 'ready'", timeout=20000)
            after.close()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0


def test_cdp_behind_a_tls_proxy_and_unprotected_refused(start: Callable[..., Daemon]) -> None:
    refused = start(SESSIONKEEPER_CDP="true")
    assert refused.wait_exit(30) == 2
    errors = [line for line in refused.raw if line.strip()]
    assert len(errors) == 1 and "SESSIONKEEPER_HTTP_TOKEN" in errors[0]
    assert "Traceback" not in errors[0]

    local = start(SESSIONKEEPER_CDP="true", SESSIONKEEPER_CDP_BIND="127.0.0.1")
    local.wait_for("browser_started", 60)
    code, version = http_get(f"{cdp_url(local)}/json/version",
                             {"X-Forwarded-Proto": "https",
                              "X-Forwarded-Host": "bot.up.railway.app"})
    assert code == 200
    assert version["webSocketDebuggerUrl"].startswith(
        f"wss://bot.up.railway.app/cdp/{SESSION}/devtools/browser/")
    # Reached at another address than the one CDP is kept to: not answered.
    assert http_get(f"{cdp_url(local, '127.0.0.2')}/json/version")[0] == 403
    assert http_get(f"http://127.0.0.1:{local.port}/cdp/nosuch/json/version")[0] == 404
    local.signal(signal.SIGTERM)
    assert local.wait_exit(30) == 0


def test_puppeteer_connects_with_browser_ws_endpoint(start: Callable[..., Daemon],
                                                     daemon_env: dict[str, str]) -> None:
    folder = npm_packages("puppeteer-core@24")
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start(SESSIONKEEPER_CDP="true", SESSIONKEEPER_HTTP_TOKEN=TOKEN,
                   SESSIONKEEPER_DEMO_LINK_AFTER="0.5")
    daemon.wait_for("browser_restarted", 60, reason="checkpoint")
    endpoint = f"ws://127.0.0.1:{daemon.port}/cdp/{SESSION}?token={TOKEN}"
    script = """
const puppeteer = require('puppeteer-core');
(async () => {
  const browser = await puppeteer.connect({browserWSEndpoint: process.env.ENDPOINT,
                                           defaultViewport: null});
  const pages = await browser.pages();
  const page = pages.find((p) => p.url().startsWith(process.env.SITE));
  await page.waitForFunction("document.body.dataset.state === 'ready'", {timeout: 20000});
  const info = await page.evaluate(() => window.demoInspect());
  console.log(JSON.stringify({pages: pages.length, state: info.state,
                              version: await browser.version()}));
  await browser.disconnect();
})().catch((err) => { console.error(err); process.exit(1); });
"""
    out = run_node(script, folder, {"ENDPOINT": endpoint,
                                    "SITE": f"http://127.0.0.1:{demo_port}"}, timeout=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["state"] == "ready" and result["pages"] >= 1
    assert daemon.wait_for("cdp_client_disconnected", 10)["by"] == "client"
    assert daemon.readyz()[0] == 200
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
