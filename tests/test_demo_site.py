"""The demo site, driven by a real headless Chromium: QR login, stored session, restart, logout."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import segno
from playwright.async_api import BrowserContext, Page, async_playwright

from app.chromium import CHROMIUM_ARGS, ChromiumNotFound, find_chromium
from app.demo import DEMO_SECRET, DemoSite
from app.demo.server import make_token

pytestmark = pytest.mark.anyio

QR = '[data-testid="qr-code"]'
CHAT_LIST = '[data-testid="chat-list"]'
LOGGED_OUT = '[data-testid="logged-out"]'
# WhatsApp Web's own selectors (whatsapp-web.js src/Client.js, wppconnect scrape-img-qr.ts).
QR_CANVAS = "div[data-ref] canvas"
QR_RELOAD = "div[data-ref] button"
PANE_SIDE = "#pane-side"
CONFLICT_DIALOG = 'div[data-animate-modal-popup="true"]'
CONFLICT_TEXT = ("WhatsApp is open in another window. Click \u201cUse here\u201d to use WhatsApp "
                 "in this window.")

# What the daemon reads, exactly as it will read it on web.whatsapp.com.
SOCKET = """() => {
  const Socket = window.require('WAWebSocketModel').Socket;
  return {state: Socket.state, hasSynced: Socket.hasSynced};
}"""
PAIR = """async (phone) => {
  const api = window.require('WAWebAltDeviceLinkingApi');
  api.setPairingType('ALT_DEVICE_LINKING');
  await api.initializeAltDeviceLinking();
  return await api.startAltLinkingFlow(phone, true);
}"""
REQUIRE_ERROR = """(name) => {
  try { window.require(name); return null; } catch (e) { return e.message; }
}"""

# Registers WhatsApp listeners as soon as the page's script has run (before its first async
# step): every Socket change and Cmd event goes to window.__events, and to the exposed
# recordEvent(...) when a test exposed one (that survives navigations).
RECORD = """
window.__events = [];
document.addEventListener("DOMContentLoaded", () => {
  const note = (...e) => {
    window.__events.push(e);
    if (typeof window.recordEvent === "function") window.recordEvent(...e);
  };
  const Socket = window.require("WAWebSocketModel").Socket;
  const Cmd = window.require("WAWebCmd").Cmd;
  const pane = () => !!document.querySelector("#pane-side");
  note("initial", Socket.state, Socket.hasSynced);
  Socket.on("change:state", (model, value) =>
    note("state", value, model === Socket && model.state === value, Socket.hasSynced, pane(),
         performance.now()));
  Socket.on("change:hasSynced", (model, value) =>
    note("hasSynced", value, model === Socket, Socket.state, pane(), performance.now()));
  for (const name of ["logout", "logout_from_bridge"]) {
    Cmd.on(name, () => note("cmd", name, location.href));
  }
});
"""

# Reads the QR canvas at the centre of every module (segno's SVG drawn at the canvas size,
# with its 2-module border), and the data-ref of the div around it, in one go.
SAMPLE_CANVAS = """(modules) => {
  const canvas = document.querySelector("div[data-ref] canvas");
  const ref = canvas.closest("[data-ref]").getAttribute("data-ref");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const step = canvas.width / (modules + 4);
  let bits = "";
  for (let row = 0; row < modules; row++) {
    for (let col = 0; col < modules; col++) {
      const x = Math.floor((2 + col + 0.5) * step), y = Math.floor((2 + row + 0.5) * step);
      bits += data[(y * canvas.width + x) * 4] < 128 ? "1" : "0";
    }
  }
  return {ref, bits, width: canvas.width, shown: canvas.getBoundingClientRect().width};
}"""

# Nothing a WhatsApp or demo selector knows.
KNOWN_SELECTORS = ("[data-ref], canvas, #pane-side, [data-testid], [data-animate-modal-popup], "
                   "[data-link-code], [aria-label], button")

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


async def socket_state(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(SOCKET)
    return result


async def wait_socket(page: Page, state: str) -> float:
    """Waits until window.require('WAWebSocketModel').Socket.state is `state`; the seconds
    it took."""
    t0 = time.monotonic()
    await page.wait_for_function(
        "s => window.require('WAWebSocketModel').Socket.state === s", arg=state, polling=50)
    return time.monotonic() - t0


# The page's own clock (performance.now(), ms) at every change of its screen
# (body[data-state]), noted as it happens: a loaded test process does not shift it.
STATE_TIMES = """
window.__stateTimes = [];
new MutationObserver(() => {
  const state = document.body && document.body.dataset.state;
  const last = window.__stateTimes[window.__stateTimes.length - 1];
  if (state && (!last || last[0] !== state)) window.__stateTimes.push([state, performance.now()]);
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-state"]});
"""


async def state_gap(page: Page, first: str, then: str) -> float:
    """Milliseconds on the page's clock from the screen `first` to the next `then`
    (STATE_TIMES must be installed)."""
    times: list[list[Any]] = await page.evaluate("window.__stateTimes")
    start = next(i for i, (state, _) in enumerate(times) if state == first)
    end = next(t for state, t in times[start:] if state == then)
    return float(end - times[start][1])


async def events(page: Page) -> list[list[Any]]:
    result: list[list[Any]] = await page.evaluate("window.__events")
    return result


async def assert_canvas_shows(page: Page, payload: str | None) -> None:
    """The QR canvas encodes `payload`, module for module, and is at least 200 px wide."""
    assert payload
    matrix = segno.make_qr(payload, error="m").matrix
    seen = await page.evaluate(SAMPLE_CANVAS, len(matrix))
    assert seen["ref"] == payload
    assert seen["width"] >= 200 and seen["shown"] >= 200
    assert seen["bits"] == "".join("1" if v else "0" for row in matrix for v in row)


async def test_first_load_shows_current_qr(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite()
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        qr = page.locator(QR)
        await qr.wait_for()
        assert await qr.get_attribute("data-ref") == site.current_payload
        assert await page.evaluate("document.body.dataset.state") == "qr"
        # As on WhatsApp Web: a visible canvas in div[data-ref], drawn with that very code.
        canvas = page.locator("div[data-ref] canvas")
        assert await canvas.is_visible()
        assert await canvas.get_attribute("aria-label") == "Scan this QR code to link a device!"
        await assert_canvas_shows(page, await qr.get_attribute("data-ref"))
        # The server's image of it (segno SVG) loaded too, over the canvas.
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
    """Server down at load: the worker serves the page, creds kept, the chat list shown with
    "Phone not connected" (TIMEOUT), as WhatsApp Web does offline."""
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
        await wait_state(page, "connecting")
        info = await inspect(page)
        assert info["hasCreds"] is True and info["history"] == ["loading", "connecting"]
        assert await socket_state(page) == {"state": "TIMEOUT", "hasSynced": False}
        assert await page.locator(PANE_SIDE).is_visible()
        assert await page.get_by_text("Phone not connected").is_visible()
        assert await page.evaluate("window.__qrSeen") is False


async def test_one_scan_links_one_page_of_those_that_showed_the_code() -> None:
    """Several sessions of one process open the demo site at once and show the same code: the
    phone's one approval goes to the first page that polls, and the others keep waiting (they
    would otherwise share a device and take its session from each other for ever)."""
    site = DemoSite()
    async with serving(site) as url, aiohttp.ClientSession(url) as http:
        shown = site.current_payload
        assert site.link(shown)

        async def poll(instance: str | None) -> dict[str, object]:
            params = {"payload": shown} | ({"instance": instance} if instance else {})
            async with http.get("/api/poll", params=params) as r:
                answer: dict[str, object] = await r.json()
                return answer

        first = await poll("page-a")
        assert first["linked"] is True
        assert await poll("page-b") == {"linked": False}
        assert await poll("page-a") == first  # the page that took it still sees it
        assert (await poll(None))["device_id"] == first["device_id"]  # a look takes nothing
        # The next scan is the other page's.
        second = site.current_payload
        assert site.link(second)
        async with http.get("/api/poll", params={"payload": second, "instance": "page-b"}) as r:
            other = await r.json()
        assert other["linked"] is True and other["device_id"] != first["device_id"]


async def test_api_rejects_stale_payload_and_forged_token() -> None:
    site = DemoSite(message_rate=12.5)
    async with serving(site) as url, aiohttp.ClientSession(url) as http:
        async with http.get("/api/qr") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            qr = await r.json()
        assert qr["payload"] == site.current_payload and 0 < qr["expires_in"] <= 20
        assert qr["idle_after"] == 120

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

        await context.add_init_script(STATE_TIMES)
        await page.reload()
        await page.locator(LOGGED_OUT).wait_for()
        assert await page.locator(QR).count() == 0
        await page.locator(QR).wait_for()
        # The notice stays two seconds before the QR replaces it (on the page's clock).
        assert 2000 <= await state_gap(page, "logged-out", "qr") <= 5000
        assert await page.locator(LOGGED_OUT).count() == 0
        assert await page.locator(QR).get_attribute("data-ref") == site.current_payload

        info = await inspect(page)
        assert info["state"] == "qr"
        assert info["history"] == ["loading", "logged-out", "qr"]
        assert info["hasCreds"] is False and info["localStorageToken"] is None
        assert info["cookie"] is False and info["messages"] == 0


# -- WhatsApp's own state and screens ---------------------------------------------------------


async def test_whatsapp_modules_follow_a_link_and_a_reload(tmp_path: Path,
                                                          chromium: Path) -> None:
    """Socket/Conn/Cmd through window.require, as on WhatsApp Web, from the QR code to the
    synced chat list; hasSynced comes after the history sync, or shortly after a restored
    session connects, and is false again after a reload."""
    site = DemoSite(message_rate=0, history_kb=1024)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        await context.add_init_script(RECORD)
        page = await first_page(context)
        await page.goto(url)
        await wait_socket(page, "UNPAIRED")
        assert await page.evaluate(REQUIRE_ERROR, "WAWebNoSuchModule") == (
            'Requiring unknown module "WAWebNoSuchModule"')
        ref = await page.locator("div[data-ref]").get_attribute("data-ref")
        assert ref == site.current_payload
        assert await page.evaluate("window.require('WAWebConnModel').Conn.ref") == ref
        assert await page.locator(QR_CANVAS).is_visible()
        # A listener taken off again is not called.
        await page.evaluate("""() => {
          const Socket = window.require('WAWebSocketModel').Socket;
          window.__offCalls = 0;
          const count = () => { window.__offCalls += 1; };
          Socket.on('change:state', count);
          Socket.off('change:state', count);
        }""")

        assert site.link(ref)
        await wait_state(page, "ready")
        await page.wait_for_function(
            "window.require('WAWebSocketModel').Socket.hasSynced === true", polling=50)
        seen = await events(page)
        assert seen[0] == ["initial", "OPENING", False]
        states = [e[1] for e in seen if e[0] == "state"]
        assert states == ["UNPAIRED", "PAIRING", "CONNECTED"]
        assert all(e[2] for e in seen if e[0] == "state")  # called with (Socket, value)
        connected = next(e for e in seen if e[0] == "state" and e[1] == "CONNECTED")
        synced = [e for e in seen if e[0] == "hasSynced"]
        # Connected before the history sync; synced once it is done, the chat list shown.
        assert connected[3] is False and connected[4] is False
        assert [e[1:5] for e in synced] == [[True, True, "CONNECTED", True]]
        assert await page.evaluate("window.__offCalls") == 0
        assert await page.locator(PANE_SIDE).is_visible()
        assert (await inspect(page))["messages"] >= 100  # the history is there

        await page.reload()
        await page.wait_for_function(
            "window.require('WAWebSocketModel').Socket.hasSynced === true", polling=50)
        seen = await events(page)
        assert seen[0] == ["initial", "OPENING", False]
        assert [e[1] for e in seen if e[0] == "state"] == ["CONNECTED"]
        connected = next(e for e in seen if e[0] == "state")
        synced = next(e for e in seen if e[0] == "hasSynced")
        assert connected[3] is False and synced[1] is True
        assert 250 <= synced[5] - connected[5] <= 2000  # ~300 ms after connecting
        assert (await inspect(page))["history"] == ["loading", "ready"]


async def test_phone_offline_and_server_down_mean_timeout(tmp_path: Path,
                                                         chromium: Path) -> None:
    port = free_port()
    site = DemoSite(port=port, message_rate=0)
    url = await site.start()
    try:
        async with browser(tmp_path / "profile", chromium) as context:
            page = await first_page(context)
            await page.goto(url)
            await link_and_wait_ready(site, page)
            await wait_socket(page, "CONNECTED")
            banner = page.get_by_text("Phone not connected")
            assert not await banner.is_visible()

            site.set_phone_online(False)
            assert await wait_socket(page, "TIMEOUT") < 3
            assert await page.evaluate("document.body.dataset.state") == "connecting"
            assert await banner.is_visible() and await page.locator(PANE_SIDE).is_visible()
            async with aiohttp.ClientSession(url) as http:
                async with http.post("/api/control", json={"phone_online": True}) as r:
                    assert r.status == 200 and (await r.json())["phone_online"] is True
            assert await wait_socket(page, "CONNECTED") < 3
            await wait_state(page, "ready")
            assert not await banner.is_visible()

            # The server itself gone: TIMEOUT too; a new server instance: CONNECTED again.
            await site.stop()
            assert await wait_socket(page, "TIMEOUT") < 5
            assert await banner.is_visible() and await page.locator(PANE_SIDE).is_visible()
            site = DemoSite(port=port, message_rate=0)
            await site.start()
            assert await wait_socket(page, "CONNECTED") < 5
            info = await inspect(page)
            assert site.active_instance(info["deviceId"]) == info["instance"]
            assert info["history"] == ["loading", "qr", "loading", "ready", "connecting",
                                       "ready", "connecting", "ready"]
    finally:
        await site.stop()


async def test_expired_qr_code_reloads(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite(message_rate=0, qr_idle_after=2, qr_rotate_seconds=60)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        await context.add_init_script(STATE_TIMES)
        page = await first_page(context)
        await page.goto(url)
        await wait_socket(page, "UNPAIRED")
        await wait_socket(page, "UNPAIRED_IDLE")
        # Idle after qr_idle_after (2 s) on the page's clock, not before.
        assert 2000 <= await state_gap(page, "qr", "qr-idle") <= 5000
        assert await page.evaluate("document.body.dataset.state") == "qr-idle"
        reload = page.locator(QR_RELOAD)
        assert await reload.is_visible()
        assert await reload.inner_text() == "Click to reload QR code"
        expired = await page.locator("div[data-ref]").get_attribute("data-ref")
        # Idle means no more codes: the server moves on, the page does not follow.
        site.refresh_payload(expired or "")
        await asyncio.sleep(2)
        assert await page.locator("div[data-ref]").get_attribute("data-ref") == expired
        assert await socket_state(page) == {"state": "UNPAIRED_IDLE", "hasSynced": False}

        # Cmd.refreshQR(), as whatsapp-web.js calls it on UNPAIRED_IDLE.
        await page.evaluate("window.require('WAWebCmd').Cmd.refreshQR()")
        assert await wait_socket(page, "UNPAIRED") < 3
        await page.locator(QR_CANVAS).wait_for()
        fresh = await page.locator("div[data-ref]").get_attribute("data-ref")
        assert fresh != expired and fresh == site.current_payload
        assert await page.evaluate("window.require('WAWebConnModel').Conn.ref") == fresh
        assert await page.locator(QR_RELOAD).count() == 0
        await assert_canvas_shows(page, fresh)

        # Expired again; wppconnect's way this time: click [data-ref] button.
        await wait_socket(page, "UNPAIRED_IDLE")
        expired = await page.locator("div[data-ref]").get_attribute("data-ref")
        assert expired == site.current_payload  # the server did not rotate meanwhile
        await page.locator(QR_RELOAD).click()
        await wait_socket(page, "UNPAIRED")
        await page.locator(QR_CANVAS).wait_for()
        fresh = await page.locator("div[data-ref]").get_attribute("data-ref")
        assert fresh != expired and fresh == site.current_payload
        assert site.link(fresh)
        await wait_state(page, "ready")
        assert await wait_socket(page, "CONNECTED") < 3
        history = (await inspect(page))["history"]
        assert history == ["loading", "qr", "qr-idle", "qr", "qr-idle", "qr", "loading", "ready"]


async def test_another_window_takes_over(tmp_path: Path, chromium: Path) -> None:
    """Two Chromium processes on copies of one logged-in profile, then two tabs: the newest
    page holds the session, the other shows WhatsApp's conflict dialog until "Use here"."""
    site = DemoSite(message_rate=0)
    one, two = tmp_path / "one", tmp_path / "two"
    async with serving(site) as url:
        async with browser(one, chromium) as context:
            page = await first_page(context)
            await page.goto(url)
            await link_and_wait_ready(site, page)
            device = (await inspect(page))["deviceId"]
        shutil.copytree(one, two)

        async with browser(one, chromium) as ctx_a, browser(two, chromium) as ctx_b:
            a = await first_page(ctx_a)
            await a.goto(url)
            await wait_socket(a, "CONNECTED")
            a_id = (await inspect(a))["instance"]
            assert site.active_instance(device) == a_id
            b = await first_page(ctx_b)
            await b.goto(url)
            await wait_socket(b, "CONNECTED")
            b_id = (await inspect(b))["instance"]
            assert b_id != a_id and (await inspect(b))["deviceId"] == device

            assert await wait_socket(a, "CONFLICT") < 3
            assert site.active_instance(device) == b_id
            assert await a.evaluate("document.body.dataset.state") == "conflict"
            dialog = a.locator(CONFLICT_DIALOG)
            assert await dialog.is_visible()
            assert (await dialog.locator("div").first.inner_text()).strip() == CONFLICT_TEXT
            assert [t.strip() for t in await dialog.locator("button").all_inner_texts()] == [
                "Close", "Use here"]
            assert await a.locator(PANE_SIDE).count() == 0
            assert await a.locator(QR_CANVAS).count() == 0
            assert await b.locator(CONFLICT_DIALOG).count() == 0

            # "Use here" in the DOM takes it back; the other window goes CONFLICT.
            await dialog.get_by_role("button", name="Use here").click()
            assert await wait_socket(a, "CONNECTED") < 3
            await a.locator(PANE_SIDE).wait_for()
            assert await wait_socket(b, "CONFLICT") < 3
            assert site.active_instance(device) == a_id
            # Socket.takeover(), as whatsapp-web.js's takeoverOnConflict calls it.
            assert await b.evaluate(
                "window.require('WAWebSocketModel').Socket.takeover()") is True
            await wait_socket(b, "CONNECTED")
            await wait_state(b, "ready")
            assert await wait_socket(a, "CONFLICT") < 3
            # Close: the dialog goes, the window stays out of the session.
            await a.locator(CONFLICT_DIALOG).get_by_role("button", name="Close").click()
            assert await a.locator(CONFLICT_DIALOG).count() == 0
            await asyncio.sleep(1.5)
            assert (await socket_state(a))["state"] == "CONFLICT"
            assert await a.locator(PANE_SIDE).count() == 0

            # Tabs of one browser: the new tab takes over from the first.
            b2 = await ctx_b.new_page()
            await b2.goto(url)
            await wait_socket(b2, "CONNECTED")
            assert await wait_socket(b, "CONFLICT") < 3
            assert site.active_instance(device) == (await inspect(b2))["instance"]
            assert (await socket_state(a))["state"] == "CONFLICT"


async def test_pairing_code_links_like_a_scan(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite(message_rate=0, pairing_rotate_seconds=3)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        await wait_socket(page, "UNPAIRED")
        code = await page.evaluate(PAIR, "+4915550001")
        assert re.fullmatch(r"[A-Z0-9]{8}", code)
        await wait_state(page, "pairing-code")
        assert await socket_state(page) == {"state": "UNPAIRED", "hasSynced": False}
        cells = page.locator("div[data-link-code]")
        assert await cells.get_attribute("data-link-code") == ",".join(code)
        assert "".join(await cells.locator("span").all_inner_texts()) == (
            f"{code[:4]}-{code[4:]}")
        assert await page.locator("div[data-ref]").count() == 0
        assert site.current_pairing_code == code

        # Asked again (as whatsapp-web.js does every 3 minutes): a fresh code.
        again = await page.evaluate(PAIR, "+4915550001")
        assert again != code and site.current_pairing_code == again
        assert not site.link_code(code)
        await page.wait_for_function(
            "c => document.querySelector('[data-link-code]').dataset.linkCode === c",
            arg=",".join(again))
        # The server rotates codes; the page shows the new one.
        await page.wait_for_function(
            "c => document.querySelector('[data-link-code]').dataset.linkCode !== c",
            arg=",".join(again), timeout=6000, polling=100)
        rotated = (await cells.get_attribute("data-link-code") or "").replace(",", "")
        assert rotated == site.current_pairing_code and rotated != again
        async with aiohttp.ClientSession(url) as http:
            async with http.post("/api/link", json={"code": again}) as r:
                assert r.status == 409 and (await r.json())["linked"] is False
            typed = f"{rotated[:4]}-{rotated[4:]}".lower()  # as typed on a phone
            async with http.post("/api/link", json={"code": typed}) as r:
                assert r.status == 200 and await r.json() == {"linked": True, "code": rotated}
        await wait_state(page, "ready")
        await page.wait_for_function(
            "window.require('WAWebSocketModel').Socket.hasSynced === true", polling=50)
        info = await inspect(page)
        assert info["history"][-2:] == ["loading", "ready"] and "pairing-code" in info["history"]
        assert info["hasCreds"] and info["token"] == make_token(info["deviceId"])
        assert info["localStorageToken"] == info["token"] and info["serviceWorker"]
        assert site.current_pairing_code is None
        error = await page.evaluate(
            "p => window.require('WAWebAltDeviceLinkingApi').startAltLinkingFlow(p, true)"
            ".then(() => null, e => e.message)", "+4915550001")
        assert error and "CONNECTED" in error


async def test_unlink_from_the_phone_logs_out(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite(message_rate=600)
    recorded: list[list[Any]] = []
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        await context.expose_function("recordEvent", lambda *e: recorded.append(list(e)))
        await context.add_init_script(RECORD)
        page = await first_page(context)
        await page.goto(url)
        await link_and_wait_ready(site, page)
        await page.wait_for_function(
            "async () => (await demoInspect()).messages >= 3", polling=200)
        before = await inspect(page)
        recorded.clear()

        async with aiohttp.ClientSession(url) as http:
            async with http.post("/api/unlink") as r:
                assert await r.json() == {"unlinked": [before["deviceId"]], "all": True}
            await page.wait_for_url(re.compile(r"\?post_logout=1$"), timeout=5000)
            await wait_socket(page, "UNPAIRED")
            assert await page.locator(QR_CANVAS).is_visible()
            assert await page.evaluate("document.body.dataset.state") == "qr"
            # The listeners registered before the logout saw it, on the page logged out.
            cmds = [e for e in recorded if e[0] == "cmd"]
            assert cmds == [["cmd", "logout", url], ["cmd", "logout_from_bridge", url]]
            after = await inspect(page)
            assert after["hasCreds"] is False and after["localStorageToken"] is None
            assert after["cookie"] is False and after["messages"] == 0
            async with http.get("/api/verify", params={"token": before["token"],
                                                       "device_id": before["deviceId"]}) as r:
                assert (await r.json())["valid"] is False

        # Linking again from the post_logout page: a new device, the marker gone.
        await link_and_wait_ready(site, page)
        again = await inspect(page)
        assert again["deviceId"] != before["deviceId"] and "post_logout" not in page.url

        # Logged out while no page was open: the next load logs out the same way.
        await page.goto("about:blank")
        assert site.unlink(again["deviceId"]) == [again["deviceId"]]
        recorded.clear()
        await page.goto(url)
        await page.wait_for_url(re.compile(r"\?post_logout=1$"), timeout=5000)
        await wait_socket(page, "UNPAIRED")
        assert [e[1] for e in recorded if e[0] == "cmd"] == ["logout", "logout_from_bridge"]
        assert (await inspect(page))["hasCreds"] is False


async def test_blocking_screens_come_and_go(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite(message_rate=0)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context, \
            aiohttp.ClientSession(url) as http:
        page = await first_page(context)
        await page.goto(url)
        await link_and_wait_ready(site, page)
        await wait_socket(page, "CONNECTED")
        for name, shown, socket_name in (("deprecated", "deprecated", "DEPRECATED_VERSION"),
                                         ("blocked", "blocked", "TOS_BLOCK"),
                                         ("mystery", "unknown", "MYSTERY_STATE")):
            if name == "blocked":
                async with http.post("/api/control", json={"screen": name}) as r:
                    assert r.status == 200 and (await r.json())["screen"] == name
            else:
                site.set_screen(name)
            assert await wait_socket(page, socket_name) < 3, name
            assert await page.evaluate("document.body.dataset.state") == shown
            assert await page.locator(PANE_SIDE).count() == 0
            assert await page.locator("div[data-ref]").count() == 0
            if name == "deprecated":
                assert await page.get_by_text("Update Google Chrome").is_visible()
            if name == "mystery":
                assert await page.locator(f"#app :is({KNOWN_SELECTORS})").count() == 0
            site.set_screen(None)
            assert await wait_socket(page, "CONNECTED") < 3, name
            await page.locator(PANE_SIDE).wait_for()
            await wait_state(page, "ready")

        # A page on the QR code goes to the screen too, and back to a QR code.
        site.set_screen("deprecated")
        qr_page = await context.new_page()
        await qr_page.goto(url)
        await wait_socket(qr_page, "DEPRECATED_VERSION")
        await wait_socket(page, "DEPRECATED_VERSION")
        site.set_screen(None)
        await wait_socket(page, "CONNECTED")
        await wait_state(page, "ready")
        assert site.screen is None
        with pytest.raises(ValueError, match="unknown screen"):
            site.set_screen("nope")


async def test_modules_can_disappear(tmp_path: Path, chromium: Path) -> None:
    """set_modules(False): from the next load require() knows none of WhatsApp's modules (as
    after a WhatsApp release that renamed them); the DOM works as before."""
    site = DemoSite(message_rate=0)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        await wait_socket(page, "UNPAIRED")
        site.set_modules(False)
        assert await page.evaluate(REQUIRE_ERROR, "WAWebSocketModel") is None  # this load
        await page.reload()
        await page.locator(QR_CANVAS).wait_for()
        for name in ("WAWebSocketModel", "WAWebCmd", "WAWebConnModel",
                     "WAWebAltDeviceLinkingApi"):
            assert await page.evaluate(REQUIRE_ERROR, name) == (
                f'Requiring unknown module "{name}"')
        await link_and_wait_ready(site, page)
        assert await page.locator(PANE_SIDE).is_visible()
        async with aiohttp.ClientSession(url) as http:
            async with http.post("/api/control", json={"modules": True}) as r:
                assert await r.json() == {"phone_online": True, "screen": None, "modules": True}
        await page.reload()
        await wait_socket(page, "CONNECTED")


async def test_service_worker_reports_what_it_sees(tmp_path: Path, chromium: Path) -> None:
    site = DemoSite(message_rate=0)
    async with serving(site) as url, browser(tmp_path / "profile", chromium) as context:
        page = await first_page(context)
        await page.goto(url)
        await link_and_wait_ready(site, page)  # the worker is registered once linked
        await page.wait_for_function("navigator.serviceWorker.controller !== null")
        async with page.expect_response(re.compile(r"/__sw/ua$")) as response_info:
            report = await page.evaluate("fetch('/__sw/ua').then(r => r.json())")
        response = await response_info.value
        assert response.from_service_worker
        assert report["source"] == "service-worker"
        user_agent = await page.evaluate("navigator.userAgent")
        brands = await page.evaluate(
            "navigator.userAgentData.brands.map(b => ({brand: b.brand, version: b.version}))")
        assert report["userAgent"] == user_agent and report["header"] == user_agent
        assert report["brands"] == brands and brands
        assert user_agent in site.user_agents

        async with aiohttp.ClientSession(url, headers={"User-Agent": "probe/1.0"}) as http:
            async with http.get("/__sw/ua") as r:
                assert r.status == 404  # only the worker answers it
        assert site.user_agents[-1] == "probe/1.0"


async def test_api_sessions_pairing_unlink_and_controls() -> None:
    site = DemoSite(message_rate=0)
    async with serving(site) as url, aiohttp.ClientSession(url) as http:
        async def post(path: str, body: object | None = None) -> tuple[int, Any]:
            async with http.post(path, json=body) as r:
                assert r.headers["Cache-Control"] == "no-store"
                return r.status, await r.json()

        # Controls.
        async with http.get("/api/control") as r:
            assert await r.json() == {"phone_online": True, "screen": None, "modules": True}
        for bad in ({"screen": "nope"}, {"screen": ["mystery"]}, {"phone_online": "no"},
                    {"modules": 1}, {"colour": "red"}, []):
            assert (await post("/api/control", bad))[0] == 400, bad
        assert await post("/api/control", {"screen": "mystery", "phone_online": False}) == (
            200, {"phone_online": False, "screen": "mystery", "modules": True})
        assert site.screen == "mystery" and site.phone_online is False

        # Heartbeats: no session, then a device's pages fighting over it.
        assert (await post("/api/heartbeat", {}))[0] == 400
        assert (await post("/api/heartbeat", {"instance": "x" * 65}))[0] == 400
        assert await post("/api/heartbeat", {"instance": "a"}) == (
            200, {"session": "none", "phone_online": False, "screen": "mystery"})
        site.set_screen(None)
        site.set_phone_online(True)

        async def link_device() -> tuple[str, str]:
            status, body = await post("/api/link", {})
            assert status == 200
            async with http.get("/api/poll", params={"payload": body["payload"]}) as r:
                polled = await r.json()
            assert polled["linked"]
            return polled["device_id"], polled["token"]

        d1, t1 = await link_device()

        async def beat(instance: str, **extra: Any) -> str:
            status, body = await post("/api/heartbeat", {"instance": instance, "device_id": d1,
                                                         "token": t1, **extra})
            assert status == 200
            session: str = body["session"]
            return session

        assert await beat("a") == "active"  # nobody held it: the first asking gets it
        assert await beat("b", claim=True) == "active"
        assert await beat("a") == "conflict" and await beat("b") == "active"
        assert site.active_instance(d1) == "b"
        status, body = await post("/api/takeover", {"instance": "a", "device_id": d1,
                                                    "token": t1})
        assert status == 200 and body["session"] == "active"
        assert await beat("b") == "conflict" and await beat("b", standby=True) == "conflict"
        assert await beat("a", token="0" * 64) == "invalid"
        assert site.active_instance(d1) == "a"

        # Pairing codes.
        assert (await post("/api/pairing", {"phone": "12"}))[0] == 400
        assert (await post("/api/pairing", {}))[0] == 400
        status, pairing = await post("/api/pairing", {"phone": "+49 1555 0001"})
        assert status == 200 and re.fullmatch(r"[1-9A-HJ-NP-TV-Z]{8}", pairing["code"])
        assert pairing["expires_in"] == 180
        async with http.get("/api/pairing", params={"ref": pairing["ref"]}) as r:
            assert await r.json() == {"linked": False, "code": pairing["code"],
                                      "expires_in": pytest.approx(180, abs=1)}
        async with http.get("/api/pairing", params={"ref": "nope"}) as r:
            assert r.status == 404
        assert (await post("/api/link", {"code": "ABCD-EFGH"}))[0] == 409
        assert (await post("/api/link", {"code": 12345678}))[0] == 400
        assert (await post("/api/link", {"code": pairing["code"], "payload": "2@x"}))[0] == 400
        code = pairing["code"]
        assert await post("/api/link", {"code": f" {code[:4].lower()}-{code[4:]} "}) == (
            200, {"linked": True, "code": code})
        assert (await post("/api/link", {"code": code}))[0] == 409  # a code links once
        async with http.get("/api/pairing", params={"ref": pairing["ref"]}) as r:
            linked = await r.json()
        assert linked["linked"] and linked["token"] == make_token(linked["device_id"])
        d2, t2 = linked["device_id"], linked["token"]
        assert site.current_pairing_code is None

        # Logouts from the phone: one device, then all, including ones never seen here.
        async def valid(token: str, device_id: str) -> bool:
            async with http.get("/api/verify",
                                params={"token": token, "device_id": device_id}) as r:
                result: bool = (await r.json())["valid"]
                return result

        assert (await post("/api/unlink", {"device_id": 5}))[0] == 400
        assert await post("/api/unlink", {"device_id": d1}) == (
            200, {"unlinked": [d1], "all": False})
        assert not await valid(t1, d1) and await valid(t2, d2)
        assert await beat("a") == "revoked" and site.active_instance(d1) is None
        stranger = "f" * 32
        assert await valid(make_token(stranger), stranger)
        assert await post("/api/unlink", {}) == (200, {"unlinked": [d2], "all": True})
        assert not await valid(t2, d2) and not await valid(make_token(stranger), stranger)
        d4, t4 = await link_device()
        assert await valid(t4, d4)  # linked after the logout

        # Refreshing an expired QR code: a new payload only if the expired one is current.
        current = site.current_payload
        status, qr = await post("/api/qr", {"expired": "2@long-gone"})
        assert status == 200 and qr["payload"] == current
        status, qr = await post("/api/qr", {"expired": current})
        assert status == 200 and qr["payload"] != current
        assert (await post("/api/qr", {}))[0] == 400

        # The User-Agent headers the server saw: distinct, newest last, bounded.
        for i in range(70):
            async with http.get("/api/config", headers={"User-Agent": f"ua-{i}"}) as r:
                assert r.status == 200
        agents = site.user_agents
        assert len(agents) == 64 and agents[-1] == "ua-69" and "ua-0" not in agents

    # A fresh server knows no active page: the first to ask gets the session; a page in the
    # conflict dialog (standby) never takes it.
    other = DemoSite()
    async with serving(other) as url2, aiohttp.ClientSession(url2) as http:
        d3 = "d3" * 16
        async with http.post("/api/heartbeat", json={"instance": "s", "device_id": d3,
                                                     "token": make_token(d3),
                                                     "standby": True}) as r:
            assert (await r.json())["session"] == "conflict"
        assert other.active_instance(d3) is None
    with pytest.raises(ValueError):
        DemoSite(qr_idle_after=0)
