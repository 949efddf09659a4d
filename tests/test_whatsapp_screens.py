"""Every screen WhatsApp can show, reached on the demo site, read by the daemon's WhatsApp code.

The demo exposes WhatsApp's own modules (`window.require('WAWebSocketModel')`...) and DOM, so
the daemon reads it exactly as it reads WhatsApp. Each test checks the documented state, the
log event, the /readyz answer and the webhook call. Tests that need the site set up their own
way (short code lifetimes, a revocation while no daemon runs) run it themselves on the demo
port (tests/support/demo_thread.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from app.chromium import CHROMIUM_ARGS, find_chromium
from app.settings import Settings
from app.store.db import open_pool
from app.vault.restore import restore_profile
from tests.support.daemon import DAEMON_SESSION, ROOT, Daemon, login
from tests.support.demo_thread import ThreadedDemoSite
from tests.support.vault_db import generations, inspect_generation
from tests.support.webhook_receiver import WebhookReceiver

SESSION = DAEMON_SESSION
TOKEN = "screens-test-token-0123456789"


@pytest.fixture
def demo_message_rate() -> str:
    return "60"


def control(demo_port: int, path: str = "/api/control", **body: Any) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{demo_port}{path}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        answer: dict[str, Any] = json.loads(r.read())
        return answer


def seconds_between(first: dict[str, Any], then: dict[str, Any]) -> float:
    """Seconds between two of the daemon's log events, by the daemon's own timestamps."""
    return (datetime.fromisoformat(then["timestamp"])
            - datetime.fromisoformat(first["timestamp"])).total_seconds()


def link_through(daemon: Daemon, site: ThreadedDemoSite) -> None:
    """Approve the daemon's first QR code on a site the test runs; wait for the checkpoint."""
    payload = daemon.wait_for("qr_required", 60)["qr_payload"]
    assert site.call(lambda s: s.link(payload))
    daemon.wait_for("login_checkpoint", 30)


def wait_ready(daemon: Daemon, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = daemon.readyz()
        if code == 200:
            return body
        time.sleep(0.2)
    raise AssertionError("not ready again:\n" + daemon.log_text())


def wait_after(daemon: Daemon, since: float, name: str, timeout: float = 15,
               **fields: Any) -> dict[str, Any]:
    """The first event called name (with those fields) logged after `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in list(daemon.events):
            if event["_t"] >= since and event.get("event") == name and all(
                    event.get(k) == v for k, v in fields.items()):
                return event
        time.sleep(0.05)
    raise AssertionError(f"no {name} {fields} after the mark:\n" + daemon.log_text())


def test_phone_unreachable_is_connecting_then_degraded_then_reloaded(
        start: Callable[..., Daemon], daemon_env: dict[str, str]) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with WebhookReceiver() as hook:
        daemon = start(SESSIONKEEPER_WEBHOOK_URL=hook.url,
                       SESSIONKEEPER_CONNECTING_DEGRADED_AFTER="2",
                       SESSIONKEEPER_CONNECTING_RELOAD_AFTER="5")
        login(daemon, demo_port)
        daemon.wait_for("browser_restarted", 30, reason="checkpoint")
        # The relaunched page loads (about 1 s here) under a grace that keeps a ready
        # session ready meanwhile; what comes after it is judged as it is.
        time.sleep(3)
        wait_ready(daemon)
        since = time.monotonic()
        control(demo_port, phone_online=False)
        wait_after(daemon, since, "state_changed", state="connecting")
        code, body = daemon.readyz()
        assert code == 503 and body["state"] == "connecting" and not body["ready"]
        daemon.wait_for("connecting_too_long", 10)
        degraded = wait_after(daemon, since, "state_changed", state="degraded")
        assert degraded["degraded_by"] == ["connecting"]
        assert daemon.readyz()[1]["degraded"]
        reloaded = daemon.wait_for("page_reloaded", 15)
        assert reloaded["reason"] == "connecting" and reloaded["by"] == "reload"
        assert reloaded["app_state"] == "TIMEOUT"
        control(demo_port, phone_online=True)
        assert wait_ready(daemon)["state"] == "ready"
        for state in ("connecting", "degraded"):
            assert hook.wait_for(10, event="state_changed", state=state)
        assert hook.wait_for(10, event="state_changed", state="ready", previous="degraded") \
            or hook.wait_for(10, event="state_changed", state="ready", previous="connecting")
        daemon.stop_cleanly()


def test_an_expired_qr_code_is_refreshed(start: Callable[..., Daemon],
                                         daemon_env: dict[str, str]) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with ThreadedDemoSite(demo_port, message_rate=0, qr_idle_after=3) as site:
        daemon = start(SESSIONKEEPER_HTTP_TOKEN=TOKEN)
        first = daemon.wait_for("qr_required", 60)["qr_payload"]
        refreshed = daemon.wait_for("qr_refreshed", 20)
        assert refreshed["by"] == "command" and refreshed["own_page"]
        rotated = daemon.wait_for("qr_rotated", 10)["qr_payload"]
        assert rotated != first
        # The page never offers a dead code: what /qr serves now links.
        request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/qr/{SESSION}"
                                         "?format=raw", headers={"Authorization":
                                                                 f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            served = r.read().decode()
        assert served == site.call(lambda s: s.current_payload)
        assert site.call(lambda s: s.link(served))
        daemon.wait_for("ready", 30)
        daemon.stop_cleanly()


def _second_window(pw: Any, url: str, profile: Path) -> Any:
    """Another browser with a copy of the same login (as a second machine would have)."""
    context = pw.chromium.launch_persistent_context(
        str(profile), executable_path=str(find_chromium()), headless=True, args=CHROMIUM_ARGS)
    page = context.pages[0]
    page.goto(url)
    return context, page


def _restore(database_url: str, generation: int, target: Path) -> None:
    async def go() -> None:
        settings = Settings(database_url=database_url,  # type: ignore[arg-type]
                            data_dir=target.parent / "st")
        async with open_pool(settings, migrate=False) as pool:
            await restore_profile(pool, SESSION, target, generation=generation)

    asyncio.run(go())


def test_conflict_is_taken_over_in_our_page_never_in_a_clients(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
        tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    url = f"http://127.0.0.1:{demo_port}/"
    with WebhookReceiver() as hook:
        daemon = start(SESSIONKEEPER_CDP="true", SESSIONKEEPER_HTTP_TOKEN=TOKEN,
                       SESSIONKEEPER_WEBHOOK_URL=hook.url)
        login(daemon, demo_port)
        wait_ready(daemon)
        _restore(database_url, generations(database_url)[-1]["generation"], tmp_path / "copy")
        pw = sync_playwright().start()
        context, other = _second_window(pw, url, tmp_path / "copy")
        try:
            other.wait_for_function("document.body.dataset.state === 'ready'", timeout=20000)
            conflict = daemon.wait_for("conflict", 15)
            assert conflict["own_page"] and conflict["lease_held"]
            assert conflict["app_state"] == "CONFLICT"
            assert hook.wait_for(10, event="state_changed", state="conflict")
            taken = daemon.wait_for("conflict_taken_over", 15)
            assert taken["by"] == "command"
            other.wait_for_function("document.body.dataset.state === 'conflict'", timeout=15000)
            wait_ready(daemon)

            # A client attached through /cdp opens its own tab: the daemon follows it. When
            # another window takes the session from the client's tab, the daemon says so and
            # leaves the client's tab alone.
            client = pw.chromium.connect_over_cdp(
                f"http://127.0.0.1:{daemon.port}/cdp/{SESSION}",
                headers={"Authorization": f"Bearer {TOKEN}"})
            tab = client.contexts[0].new_page()
            tab.goto(url)
            tab.wait_for_function("document.body.dataset.state === 'ready'", timeout=20000)
            daemon.wait_for("client_page_followed", 10)
            wait_ready(daemon)
            taken_before = daemon.names().count("conflict_taken_over")
            other.get_by_role("button", name="Use here").click()
            second = [e for e in daemon.events if e.get("event") == "conflict"]
            deadline = time.monotonic() + 15
            while len(second) < 2 and time.monotonic() < deadline:
                tab.wait_for_timeout(200)
                second = [e for e in daemon.events if e.get("event") == "conflict"]
            assert len(second) == 2 and not second[1]["own_page"]
            tab.wait_for_timeout(4000)  # several observation rounds
            assert daemon.names().count("conflict_taken_over") == taken_before
            assert tab.evaluate("document.body.dataset.state") == "conflict"
            assert other.evaluate("document.body.dataset.state") == "ready"
            assert daemon.readyz()[1]["state"] == "conflict"
            client.close()
        finally:
            context.close()
            pw.stop()
        daemon.stop_cleanly()


def test_logout_from_the_phone_marks_the_login_dead(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with WebhookReceiver() as hook:
        daemon = start(SESSIONKEEPER_WEBHOOK_URL=hook.url)
        login(daemon, demo_port)
        wait_ready(daemon)
        logged_in = [g["generation"] for g in generations(database_url)]
        unlinked = subprocess.run(
            [sys.executable, "-m", "app", "demo", "unlink", "--json"], cwd=ROOT,
            env=daemon_env, capture_output=True, text=True, timeout=60)
        assert unlinked.returncode == 0, unlinked.stderr
        out = daemon.wait_for("logged_out", 15)
        assert out["reason"] == "logout" and out["generations_marked"] == logged_in
        code, body = daemon.readyz()
        assert code == 503 and body["state"] == "logged_out"
        assert hook.wait_for(10, event="state_changed", state="logged_out")
        assert {g["login_state"] for g in generations(database_url)} == {"logged_out"}
        daemon.wait_for("qr_required", 15)  # a new code to link again
        daemon.stop_cleanly()

    again = start()
    restored = again.booted()
    assert restored["generation"] not in logged_in and restored["login_state"] == "qr"
    again.wait_for("qr_required", 60)
    again.stop_cleanly()


def test_unlinked_while_no_daemon_ran_is_logged_out_at_boot(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with ThreadedDemoSite(demo_port, message_rate=0) as site:
        first = start()
        link_through(first, site)
        first.stop_cleanly()
        final = first.wait_for("shutdown_completed")["generation"]
        site.call(lambda s: s.unlink())  # the phone unlinks the device meanwhile

        second = start()
        assert second.booted()["generation"] == final
        out = second.wait_for("logged_out", 30)
        assert out["generation"] == final
        # The demo fires WhatsApp's logout event at boot; without it the QR code as the first
        # screen says the same (tests/test_login_watch.py covers that rule alone).
        assert out["reason"] in ("logout", "qr code after restoring a logged-in generation")
        assert final in out["generations_marked"]
        assert second.readyz()[1]["state"] == "logged_out"
        second.stop_cleanly()
        labels = {g["generation"]: g["login_state"] for g in generations(database_url)}
        assert labels[final] == "logged_out"

        third = start()  # restores no dead login: the QR-state capture of the second run
        restored = third.booted()
        assert restored["generation"] != final and restored["login_state"] == "qr"
        third.wait_for("qr_required", 60)
        assert "logged_out" not in third.names()
        third.stop_cleanly()


# The daemon below with two methods patched (named as such): a periodic snapshot starts right
# after the login checkpoint (the interval's timing, injected), and its capture is slowed down
# so that the logout is seen while it is under way.
SNAPSHOT_UNDER_WAY_AT_LOGOUT = """
import asyncio, json, sys, anyio
import app.session as session
original_save = session.save_snapshot
async def save_snapshot(*args, **kwargs):
    if kwargs.get("kind") == "periodic":
        print(json.dumps({"event": "test_snapshot_started",
                          "login_state": kwargs.get("login_state")}), flush=True)
        await anyio.sleep(8)
    return await original_save(*args, **kwargs)
session.save_snapshot = save_snapshot
original_checkpoint = session.SessionRunner.checkpoint
started = []
async def checkpoint(self):
    await original_checkpoint(self)
    started.append(asyncio.get_running_loop().create_task(self.snapshot("periodic")))
session.SessionRunner.checkpoint = checkpoint
from app.cli import main
sys.exit(main(["run"]))
"""


def test_a_snapshot_under_way_when_the_logout_is_seen_is_marked_too(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str) -> None:
    """A snapshot labelled logged in that commits after the logout was marked would be
    restored at the next boot: the marking waits for it and marks it too."""
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with ThreadedDemoSite(demo_port, message_rate=0) as site:
        daemon = Daemon(daemon_env, command=[sys.executable, "-c", SNAPSHOT_UNDER_WAY_AT_LOGOUT])
        try:
            link_through(daemon, site)
            daemon.wait_for("test_snapshot_started", 30, login_state="ready")
            site.call(lambda s: s.unlink())  # while the capture is under way
            out = daemon.wait_for("logged_out", 30)
            raced = daemon.wait_for("snapshot_committed", 30, kind="periodic")
            assert raced["login_state"] == "ready"
            daemon.stop_cleanly()
        finally:
            daemon.kill_all()
        labels = {g["generation"]: g["login_state"] for g in generations(database_url)}
        assert raced["generation"] in out["generations_marked"], (labels, daemon.log_text())
        assert "ready" not in labels.values(), labels

        again = start()
        restored = again.booted()
        assert restored["login_state"] != "ready"
        again.wait_for("qr_required", 60)
        assert "logged_out" not in again.names()
        again.stop_cleanly()


def test_blocked_and_unknown_screens_are_never_ready(start: Callable[..., Daemon],
                                                     daemon_env: dict[str, str]) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with WebhookReceiver() as hook:
        daemon = start(SESSIONKEEPER_WEBHOOK_URL=hook.url, SESSIONKEEPER_UNKNOWN_AFTER="3")
        login(daemon, demo_port)
        wait_ready(daemon)
        control(demo_port, screen="deprecated")
        blocked = daemon.wait_for("target_unknown", 15)
        assert blocked["app_state"] == "DEPRECATED_VERSION"
        assert blocked["url"].startswith(f"http://127.0.0.1:{demo_port}") and blocked["title"]
        code, body = daemon.readyz()
        assert code == 503 and body["state"] == "unknown"
        assert hook.wait_for(10, event="state_changed", state="unknown")
        control(demo_port, screen=None)
        wait_ready(daemon)
        since = time.monotonic()
        control(demo_port, screen="mystery")
        mystery = [e for e in daemon.events if e.get("event") == "target_unknown"]
        deadline = time.monotonic() + 20
        while len(mystery) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            mystery = [e for e in daemon.events if e.get("event") == "target_unknown"]
        assert len(mystery) == 2, daemon.log_text()
        assert mystery[1]["app_state"] == "MYSTERY_STATE"
        assert "nothing recognised for 3 s" in mystery[1]["reason"]
        assert mystery[1]["_t"] - since >= 3  # not before the setting says
        assert daemon.readyz()[0] == 503
        control(demo_port, screen=None)
        wait_ready(daemon)
        daemon.stop_cleanly()


def test_a_changed_probe_falls_back_to_the_dom(start: Callable[..., Daemon],
                                               daemon_env: dict[str, str],
                                               database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with ThreadedDemoSite(demo_port, message_rate=0) as site:
        site.call(lambda s: s.set_modules(False))  # as if WhatsApp renamed its modules
        daemon = start(SESSIONKEEPER_LOGIN_SETTLE="2")
        payload = daemon.wait_for("qr_required", 60)["qr_payload"]
        changed = daemon.wait_for("target_probe_changed")
        assert changed["probe"] == "changed" and changed["fallback"] == "dom"
        assert "WAWebSocketModel" in changed["reason"]
        assert site.call(lambda s: s.link(payload))
        ready = daemon.wait_for("ready", 30)
        assert ready["synced"] is None  # read from the DOM
        checkpoint = daemon.wait_for("login_checkpoint", 30)
        # The settle delay of the DOM path, on the daemon's clock (when the test read the
        # lines can differ by more than a loaded machine's scheduling delay).
        assert seconds_between(ready, checkpoint) >= 2
        assert daemon.names().count("target_probe_changed") == 1
        assert generations(database_url)[-1]["login_state"] == "ready"
        daemon.stop_cleanly()


def test_the_login_is_checkpointed_after_the_sync(start: Callable[..., Daemon],
                                                  daemon_env: dict[str, str],
                                                  database_url: str, tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start(SESSIONKEEPER_DEMO_HISTORY_MB="1", SESSIONKEEPER_DEMO_MESSAGE_RATE="0")
    login(daemon, demo_port)
    ready = daemon.wait_for("ready")
    assert ready["synced"] is True and ready["app_state"] == "CONNECTED"
    checkpoint = daemon.wait_for("login_checkpoint")
    assert checkpoint["_t"] >= ready["_t"]
    daemon.stop_cleanly()
    seen = inspect_generation(database_url, checkpoint["generation"], tmp_path / "g", demo_port)
    # 1 MB of history is about 134 records (4 KiB each, a 60 KB photo every 16th): all in.
    assert seen["state"] == "ready" and seen["messages"] >= 130


def test_pairing_code_links_the_demo(start: Callable[..., Daemon], daemon_env: dict[str, str],
                                     database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with ThreadedDemoSite(demo_port, message_rate=0, pairing_rotate_seconds=4) as site:
        daemon = start(SESSIONKEEPER_PAIRING_PHONE="+4915550001", SESSIONKEEPER_HTTP_TOKEN=TOKEN)
        first = daemon.wait_for("pairing_code", 60)
        assert not first["rotated"] and len(first["code"]) == 9  # XXXX-XXXX
        rotated = daemon.wait_for("pairing_code", 20, rotated=True)
        assert rotated["code"] != first["code"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{daemon.port}/qr/{SESSION}?format=code",
            headers={"Authorization": f"Bearer {TOKEN}"})
        for _ in range(20):  # the page shows a rotated code within about a second
            with urllib.request.urlopen(request, timeout=5) as r:
                code = r.read().decode()
            if code == site.call(lambda s: s.current_pairing_code):
                break
            time.sleep(0.3)
        assert code == site.call(lambda s: s.current_pairing_code)
        overview = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{daemon.port}/api/sessions",
            headers={"Authorization": f"Bearer {TOKEN}"}), timeout=5).read())
        facts = overview["sessions"][0]
        assert facts["pairing_code_available"] and code not in json.dumps(overview)
        with sync_playwright() as pw:  # the status page shows it to a person
            browser = pw.chromium.launch(executable_path=str(find_chromium()), headless=True,
                                         args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{daemon.port}/?token={TOKEN}")
            shown = page.locator(".code code")
            shown.wait_for(state="visible", timeout=15000)
            logged = {e["code"] for e in daemon.events if e.get("event") == "pairing_code"}
            assert shown.text_content() in logged  # (codes rotate every 4 s here)
            browser.close()
        # Codes rotated every 4 s above; the phone now gets as long as a real one (a CLI that
        # starts slowly on a loaded machine would miss a 4 s code every time).
        site.call(lambda s: setattr(s, "_pairing_rotate", 180.0))
        for _ in range(3):
            code = site.call(lambda s: s.current_pairing_code)
            linked = subprocess.run(
                [sys.executable, "-m", "app", "demo", "link", "--code",
                 f"{code[:4]}-{code[4:]}"],
                cwd=ROOT, env=daemon_env, capture_output=True, text=True, timeout=60)
            if "not a current pairing code" not in linked.stderr:
                break
        assert linked.returncode == 0, linked.stderr
        daemon.wait_for("ready", 30)
        daemon.wait_for("login_checkpoint", 30)
        assert generations(database_url)[-1]["login_state"] == "ready"
        daemon.stop_cleanly()


def test_a_restored_service_worker_says_plain_chrome(start: Callable[..., Daemon],
                                                     daemon_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    with ThreadedDemoSite(demo_port, message_rate=0) as site:
        first = start()
        link_through(first, site)
        first.stop_cleanly()
        shutil.rmtree(daemon_env["SESSIONKEEPER_PROFILE_DIR"])

        second = start(SESSIONKEEPER_CDP="true", SESSIONKEEPER_HTTP_TOKEN=TOKEN)
        second.wait_for("session_restored", 60)
        wait_ready(second)
        assert "user_agent_headless" not in second.names()
        with sync_playwright() as pw:
            browser = pw.chromium.connect_over_cdp(
                f"http://127.0.0.1:{second.port}/cdp/{SESSION}",
                headers={"Authorization": f"Bearer {TOKEN}"})
            page = browser.contexts[0].pages[0]
            page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=20000)
            worker = page.evaluate("fetch('/__sw/ua').then((r) => r.json())")
            own = page.evaluate("[navigator.userAgent, (navigator.userAgentData || {}).brands]")
            browser.close()
        assert worker["source"] == "service-worker"
        seen = json.dumps([worker, own, site.call(lambda s: list(s.user_agents))])
        assert "Headless" not in seen and "Chrome/" in worker["userAgent"]
        assert worker["header"] == worker["userAgent"] == own[0]
        second.stop_cleanly()
