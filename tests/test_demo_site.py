"""The demo site, driven by a real headless Chromium: QR login, stored session, restart, logout."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page, async_playwright

from app.chromium import CHROMIUM_ARGS, ChromiumNotFound, find_chromium
from app.demo import DEMO_SECRET, DemoSite
from app.demo.server import make_token

pytestmark = pytest.mark.anyio

QR = '[data-testid="qr-code"]'
CHAT_LIST = '[data-testid="chat-list"]'
LOGGED_OUT = '[data-testid="logged-out"]'

# Runs before the page's own script on every navigation: records whether a QR element was
# ever in the DOM, even for a moment, so "restored without a QR" is checked, not sampled.
WATCH_QR = """
window.__qrSeen = false;
new MutationObserver(() => {
  if (document.querySelector('[data-testid="qr-code"]')) window.__qrSeen = true;
}).observe(document, {childList: true, subtree: true});
"""

TAMPER_TOKEN = """
async () => {
  const db = await new Promise((resolve, reject) => {
    const req = indexedDB.open("demo-auth");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const tx = db.transaction("creds", "readwrite");
  const store = tx.objectStore("creds");
  const creds = await new Promise((resolve, reject) => {
    const req = store.get("creds");
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  creds.token = "0".repeat(64);
  store.put(creds, "creds");
  await new Promise((resolve, reject) => {
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
  });
  db.close();
}
"""


@pytest.fixture
def chromium() -> Path:
    try:
        return find_chromium()
    except ChromiumNotFound as exc:
        pytest.skip(str(exc))


def free_port() -> int:
    """A port free right now; both DemoSite instances of a restart test bind it in turn."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serving(site: DemoSite) -> AsyncIterator[str]:
    url = await site.start()
    try:
        yield url
    finally:
        await site.stop()


@asynccontextmanager
async def browser(profile: Path, chromium: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(profile), executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            context.set_default_timeout(10_000)
            yield context
        finally:
            await context.close()


async def first_page(context: BrowserContext) -> Page:
    return context.pages[0] if context.pages else await context.new_page()


async def inspect(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("demoInspect()")
    return result


async def wait_state(page: Page, state: str) -> None:
    await page.wait_for_function("s => document.body.dataset.state === s", arg=state)


async def link_and_wait_ready(site: DemoSite, page: Page) -> None:
    qr = page.locator(QR)
    await qr.wait_for()
    assert site.link(await qr.get_attribute("data-ref"))
    await wait_state(page, "ready")


async def test_first_load_shows_current_qr(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite()
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        qr = page.locator(QR)
        await qr.wait_for()
        assert await qr.get_attribute("data-ref") == site.current_payload
        assert await page.evaluate("document.body.dataset.state") == "qr"
        # The QR is a real image rendered by the server (segno SVG), and it loaded.
        img = qr.locator("img")
        await page.wait_for_function(
            "() => { const i = document.querySelector('#qr img'); "
            "return i && i.complete && i.naturalWidth > 0; }")
        src = await img.get_attribute("src")
        assert src is not None and src.startswith("/api/qr.svg?payload=")
        assert await page.locator(CHAT_LIST).count() == 0
        info = await inspect(page)
        assert info["hasCreds"] is False and info["cookie"] is False
        assert info["serviceWorker"] is False


async def test_qr_rotates(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite(qr_rotate_seconds=1.5)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        qr = page.locator(QR)
        await qr.wait_for()
        seen = [await qr.get_attribute("data-ref")]
        deadline = time.monotonic() + 8
        while len(seen) < 3 and time.monotonic() < deadline:
            ref = await qr.get_attribute("data-ref")
            if ref != seen[-1]:
                seen.append(ref)
            await asyncio.sleep(0.1)
        assert len(seen) == 3, f"data-ref did not follow the rotation: {seen}"
        assert all(ref and ref.startswith("2@") for ref in seen)
        # The page keeps up with the server: within a poll tick they agree again.
        for _ in range(30):
            if await qr.get_attribute("data-ref") == site.current_payload:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("data-ref never matched the current payload")


async def test_link_stores_session_and_writes_messages(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite(message_rate=600)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        await link_and_wait_ready(site, page)
        await page.locator(CHAT_LIST).wait_for()
        assert await page.locator(QR).count() == 0

        info = await inspect(page)
        assert info["state"] == "ready" and info["hasCreds"] is True
        assert info["keyLength"] == 32
        assert 20_000 <= info["avatarSize"] <= 100_000
        assert info["avatarType"] == "image/png" and info["avatarReadable"] is True
        assert info["localStorageToken"] == info["token"]
        assert info["cookie"] is True and info["serviceWorker"] is True
        assert info["token"] == make_token(info["deviceId"])

        cookies = [c for c in await context.cookies(url) if c["name"] == "demo_session"]
        assert len(cookies) == 1 and cookies[0]["value"] == info["token"]
        # Persistent, about a year: a session cookie would not survive a browser restart.
        assert cookies[0]["expires"] > time.time() + 360 * 86400

        # 600 per minute is 10 per second.
        before = info["messages"]
        await asyncio.sleep(1.5)
        after = await inspect(page)
        assert after["messages"] - before >= 8
        assert after["lastMessage"] == after["messages"]  # n counts from 1 without gaps
        assert await page.locator("#message-count").inner_text() != "0"


async def test_session_survives_browser_and_server_restart(tmp_path: Path,
                                                           chromium: Path) -> None:
    # Cookies, localStorage and IndexedDB are per origin: both servers must use the same port.
    port = free_port()
    profile = tmp_path / "profile"
    first = DemoSite(port=port, message_rate=600)
    async with serving(first) as url, browser(profile, chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        await link_and_wait_ready(first, page)
        await page.wait_for_function(
            "async () => (await demoInspect()).messages >= 10", polling=200)
        before = await inspect(page)

    second = DemoSite(port=port, message_rate=600)  # a new instance knows nothing of the link
    async with serving(second) as url2, browser(profile, chromium) as context:
        assert url2 == url
        await context.add_init_script(WATCH_QR)
        page = await first_page(context)
        await page.goto(url2)
        await wait_state(page, "ready")
        await page.locator(CHAT_LIST).wait_for()
        after = await inspect(page)
        assert after["history"] == ["loading", "ready"]
        for key in ("token", "deviceId", "keyLength", "avatarSize", "avatarType",
                    "localStorageToken"):
            assert after[key] == before[key], key
        assert after["avatarReadable"] is True
        assert after["cookie"] is True and after["serviceWorker"] is True
        assert after["messages"] >= before["messages"]
        # Writing goes on from the restored last message.
        await page.wait_for_function(
            "n => demoInspect().then(i => i.lastMessage > n)", arg=after["lastMessage"],
            polling=200)
        assert await page.evaluate("window.__qrSeen") is False


async def test_offline_start_keeps_the_session(tmp_path: Path, chromium: Path) -> None:
    """Server down at load: the worker serves the page, creds count as valid for now."""
    port = free_port()
    profile = tmp_path / "profile"
    site = DemoSite(port=port, message_rate=0)
    async with serving(site) as url, browser(profile, chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        await link_and_wait_ready(site, page)
    # No server at all now.
    async with browser(profile, chromium) as context:
        await context.add_init_script(WATCH_QR)
        page = await first_page(context)
        await page.goto(url)
        await wait_state(page, "ready")
        info = await inspect(page)
        assert info["hasCreds"] is True and info["history"] == ["loading", "ready"]
        assert await page.evaluate("window.__qrSeen") is False


async def test_api_rejects_stale_payload_and_forged_token() -> None:
    site = DemoSite(message_rate=12.5)
    async with serving(site) as url, aiohttp.ClientSession(url) as http:
        async with http.get("/api/qr") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            qr = await r.json()
        assert qr["payload"] == site.current_payload and 0 < qr["expires_in"] <= 20

        async with http.post("/api/link", json={"payload": "2@stale"}) as r:
            assert r.status == 409
            body = await r.json()
            assert body["linked"] is False and body["error"]
        async with http.get("/api/poll", params={"payload": qr["payload"]}) as r:
            assert await r.json() == {"linked": False}

        async with http.post("/api/link", json={"payload": qr["payload"]}) as r:
            assert r.status == 200
            assert await r.json() == {"linked": True, "payload": qr["payload"]}
        # Single use: the approved payload is no longer current.
        async with http.post("/api/link", json={"payload": qr["payload"]}) as r:
            assert r.status == 409
        assert site.current_payload != qr["payload"]
        assert site.link("2@stale") is False

        async with http.get("/api/poll", params={"payload": qr["payload"]}) as r:
            assert r.headers["Cache-Control"] == "no-store"
            linked = await r.json()
        assert linked["linked"] is True
        token, device_id = linked["token"], linked["device_id"]

        async def valid(tok: str, dev: str) -> bool:
            async with http.get("/api/verify", params={"token": tok, "device_id": dev}) as r:
                assert r.headers["Cache-Control"] == "no-store"
                result: bool = (await r.json())["valid"]
                return result

        assert await valid(token, device_id) is True
        forged = ("1" if token[0] != "1" else "2") + token[1:]
        assert await valid(forged, device_id) is False
        assert await valid(token, device_id + "x") is False
        assert await valid("", "") is False

        # A link with no body approves whatever is current; each link is a new device.
        async with http.post("/api/link") as r:
            assert r.status == 200
            second = (await r.json())["payload"]
        async with http.get("/api/poll", params={"payload": second}) as r:
            assert (await r.json())["device_id"] != device_id

        async with http.get("/api/config") as r:
            assert await r.json() == {"message_rate": 12.5, "history_kb": 0}
        async with http.get("/sw.js") as r:
            assert r.status == 200 and r.headers["Service-Worker-Allowed"] == "/"
            assert "javascript" in r.headers["Content-Type"]
        async with http.get("/app.js") as r:
            assert r.status == 200 and "demoInspect" in await r.text()
        async with http.get("/api/qr.svg", params={"payload": "hello"}) as r:
            assert r.status == 200 and r.content_type == "image/svg+xml"
            assert "<svg" in await r.text()
        async with http.get("/..%2Fserver.py") as r:
            assert r.status == 404

    # Stateless tokens: another server instance accepts them.
    other = DemoSite()
    async with serving(other) as url2, aiohttp.ClientSession(url2) as http:
        async with http.get("/api/verify", params={"token": token, "device_id": device_id}) as r:
            assert (await r.json())["valid"] is True
    assert isinstance(DEMO_SECRET, bytes)


async def test_invalid_stored_creds_log_out(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite(message_rate=600)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        await link_and_wait_ready(site, page)
        await page.wait_for_function(
            "async () => (await demoInspect()).messages >= 3", polling=200)
        await page.evaluate(TAMPER_TOKEN)

        await page.reload()
        await page.locator(LOGGED_OUT).wait_for()
        shown_at = time.monotonic()
        assert await page.locator(QR).count() == 0
        await page.locator(QR).wait_for()
        # The notice stays about two seconds before the QR replaces it.
        assert 1.5 <= time.monotonic() - shown_at <= 5
        assert await page.locator(LOGGED_OUT).count() == 0
        assert await page.locator(QR).get_attribute("data-ref") == site.current_payload

        info = await inspect(page)
        assert info["state"] == "qr"
        assert info["history"] == ["loading", "logged-out", "qr"]
        assert info["hasCreds"] is False and info["localStorageToken"] is None
        assert info["cookie"] is False and info["messages"] == 0
