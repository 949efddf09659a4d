"""The operator's view: the status page in a real Chromium, /api/sessions, /qr, /metrics, the
token, the webhook (against a local receiver) and the shape of the log lines."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.sync_api import sync_playwright

from app.chromium import CHROMIUM_ARGS, find_chromium
from app.errors import ConfigError
from app.events import EventLog
from app.log import configure_logging, get_logger
from app.metrics import Metrics
from app.qr import log_qr
from app.settings import load_settings
from app.status_page import render_page
from app.vault.options import VaultOptions
from app.vault.save import save_snapshot
from app.webhook import Webhook
from tests.support.daemon import (
    DAEMON_SESSION,
    Daemon,
    free_port,
    link_demo,
    metric_samples,
)
from tests.support.profile_tree import ProfileTree
from tests.support.webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
# Test artifacts (the page's screenshots) go outside the tracked tree; the copies in
# results/status-page were made with SESSIONKEEPER_TEST_ARTIFACTS=results.
SHOTS = Path(os.environ.get("SESSIONKEEPER_TEST_ARTIFACTS",
                            ROOT / ".sessionkeeper" / "test-artifacts")) / "status-page"
SESSION = DAEMON_SESSION
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture
def demo_message_rate() -> str:
    return "60"


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def get(daemon: Daemon, path: str, bearer: str | None = None) -> Reply:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}{path}")
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.headers, err.read())


def link(demo_port: int, payload: str) -> bool:
    """The phone scan, with the payload the status page's QR code carries."""
    try:
        return bool(link_demo(demo_port, payload)["linked"])
    except urllib.error.HTTPError:
        return False  # 409: the code rotated in between


_QR_LOADED = """() => {
  const img = document.querySelector('.session[data-session="e2e"] .qr img');
  return !!img && !img.closest('.qr').hidden && img.complete && img.naturalWidth > 0;
}"""
_READY_SHOWN = """() => {
  const card = document.querySelector('.session[data-session="e2e"]');
  return card.querySelector('.state').textContent === 'ready'
    && card.querySelector('.qr').hidden
    && card.querySelector('[data-field="generation"]').textContent !== 'none';
}"""


def test_status_page_in_a_browser_with_a_token(start: Callable[..., Daemon],
                                               daemon_env: dict[str, str]) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start(SESSIONKEEPER_HTTP_TOKEN=TOKEN)
    daemon.wait_for("qr_required", 60)
    assert "status_page_unprotected" not in daemon.names()

    # The probes stay open; everything else asks for the token.
    assert get(daemon, "/healthz").status == 200
    assert get(daemon, "/readyz").status == 503
    for path in ("/", "/api/sessions", f"/qr/{SESSION}", f"/qr/{SESSION}?format=raw",
                 "/metrics"):
        for bearer in (None, "wrong-token-0123456789"):
            denied = get(daemon, path, bearer)
            assert denied.status == 401, path
            assert denied.headers["WWW-Authenticate"].startswith("Bearer"), path
        assert get(daemon, f"{path}{'&' if '?' in path else '?'}token=nope").status == 401
    assert get(daemon, "/api/sessions", TOKEN).status == 200
    assert get(daemon, f"/api/sessions?token={TOKEN}").status == 200

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(find_chromium(None)), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.goto(f"http://127.0.0.1:{daemon.port}/?token={TOKEN}")
            page.wait_for_function(_QR_LOADED, timeout=15_000)
            card = page.locator('.session[data-session="e2e"]')
            assert card.locator(".state").text_content() == "qr_required"
            page.screenshot(path=str(SHOTS / "status-page.png"), full_page=True)

            # What the phone would read off the screen: the payload behind the image.
            raw = get(daemon, f"/qr/{SESSION}?format=raw", TOKEN)
            assert raw.status == 200 and raw.headers["Cache-Control"] == "no-store"
            payload = raw.body.decode()
            assert payload.startswith("2@")
            if not link(demo_port, payload):
                link(demo_port, get(daemon, f"/qr/{SESSION}?format=raw", TOKEN).body.decode())
            page.wait_for_function(_READY_SHOWN, timeout=30_000)
            page.screenshot(path=str(SHOTS / "status-page-ready.png"), full_page=True)
            shown = {f: card.locator(f'[data-field="{f}"]').text_content()
                     for f in ("generation", "kept", "uploaded", "holder")}
        finally:
            browser.close()

    daemon.wait_for("ready", 10)
    checkpoint = daemon.wait_for("login_checkpoint", 30)
    assert get(daemon, f"/qr/{SESSION}", TOKEN).status == 404
    overview = get(daemon, "/api/sessions", TOKEN).json()
    [facts] = overview["sessions"]
    assert facts["state"] == "ready" and facts["ready"] and facts["run_here"]
    assert facts["lease_held"] and facts["lease_holder"] == overview["owner"]
    assert facts["last_snapshot"]["generation"] == checkpoint["generation"]
    assert facts["last_snapshot"]["bytes_uploaded"] > 0 and facts["generations_kept"] == 1
    # The page showed the same facts, updated by its script without a reload.
    assert shown["generation"] == str(checkpoint["generation"]) and shown["kept"] == "1"
    assert shown["holder"] == overview["owner"] and shown["uploaded"].endswith(" ms")

    # The metrics after the login's snapshot.
    scraped = get(daemon, "/metrics", f"{TOKEN}")
    assert scraped.status == 200 and scraped.headers["Content-Type"].startswith("text/plain")
    m = metric_samples(scraped.body.decode())
    s = (("session", SESSION),)
    assert m[("sessionkeeper_snapshot_duration_seconds_count", s)] == 1
    assert m[("sessionkeeper_snapshot_bytes_uploaded_total", s)] == \
        facts["last_snapshot"]["bytes_uploaded"]
    assert m[("sessionkeeper_snapshot_chunks_total", (("result", "new"), *s))] > 0
    assert ("sessionkeeper_snapshot_chunks_total", (("result", "reused"), *s)) in m
    assert m[("sessionkeeper_login_state", (*s, ("state", "ready")))] == 1
    assert m[("sessionkeeper_login_state", (*s, ("state", "qr_required")))] == 0
    assert m[("sessionkeeper_lease_held", s)] == 1
    assert m[("sessionkeeper_generations_kept", s)] == 1
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0


def test_open_server_serves_everything_and_keeps_the_qr_out_of_the_log(
        start: Callable[..., Daemon]) -> None:
    daemon = start(SESSIONKEEPER_LOG_QR="false")
    warned = daemon.wait_for("status_page_unprotected", 30)
    assert warned["level"] == "warning"
    shown = daemon.wait_for("qr_required", 60)
    assert "qr_payload" not in shown and shown["session_id"] == SESSION

    raw = get(daemon, f"/qr/{SESSION}?format=raw")
    assert raw.status == 200 and raw.headers["Cache-Control"] == "no-store"
    payload = raw.body.decode()
    png = get(daemon, f"/qr/{SESSION}")
    assert png.status == 200 and png.headers["Content-Type"] == "image/png"
    assert png.body.startswith(b"\x89PNG") and png.headers["Cache-Control"] == "no-store"
    svg = get(daemon, f"/qr/{SESSION}?format=svg")
    assert svg.status == 200 and b"<svg" in svg.body
    assert get(daemon, f"/qr/{SESSION}?format=gif").status == 400
    assert get(daemon, "/qr/no-such-session").status == 404

    page = get(daemon, "/")
    assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.body.decode()
    assert 'data-session="e2e"' in html and ">qr_required<" in html
    assert f'src="/qr/{SESSION}?v=' in html
    overview = get(daemon, "/api/sessions").json()
    assert overview["sessions"][0]["state"] == "qr_required"
    assert overview["sessions"][0]["qr_available"] and "qr_payload" not in overview["sessions"][0]
    m = metric_samples(get(daemon, "/metrics").body.decode())
    assert m[("sessionkeeper_login_state", (("session", SESSION), ("state", "qr_required")))] == 1

    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
    assert payload not in "\n".join(daemon.raw)


def test_webhook_receives_state_changes_after_a_failed_delivery(
        start: Callable[..., Daemon]) -> None:
    with WebhookReceiver("fail_first") as receiver:
        daemon = start(SESSIONKEEPER_WEBHOOK_URL=receiver.url,
                       SESSIONKEEPER_DEMO_LINK_AFTER="0.5")
        daemon.wait_for("ready", 60)
        ready = receiver.wait_for(30, event="state_changed", state="ready")
        # A link passes through connecting when the page is read while it pairs (timing).
        logged_ready = daemon.wait_for("state_changed", 1, state="ready")
        assert ready["session_id"] == SESSION
        assert ready["previous"] == logged_ready["previous"] in ("qr_required", "connecting")
        assert receiver.answered[0] == 500
        retried = daemon.wait_for("webhook_retry", 10)
        assert retried["attempt"] == 1 and "webhook_failed" not in daemon.names()
        first = receiver.received[0]
        assert receiver.received[1] == first  # the failed one came again
        states = [b["state"] for b in receiver.received if b["event"] == "state_changed"]
        assert states.index("qr_required") < states.index("ready")
        assert all("qr_payload" not in b for b in receiver.received)
        logged = [e["state"] for e in daemon.events if e["event"] == "state_changed"]
        # The same events are log lines (the failed delivery was sent twice).
        assert logged[:len(states) - 1] == states[1:]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0


def test_a_hanging_webhook_never_holds_up_the_session(start: Callable[..., Daemon]) -> None:
    with WebhookReceiver("hang") as receiver:
        daemon = start(SESSIONKEEPER_WEBHOOK_URL=receiver.url,
                       SESSIONKEEPER_WEBHOOK_TIMEOUT="0.5",
                       SESSIONKEEPER_DEMO_LINK_AFTER="0.5")
        daemon.wait_for("ready", 60)
        assert daemon.readyz()[0] == 200
        failed = daemon.wait_for("webhook_failed", 30)
        assert failed["attempts"] == 4 and failed["reason"] == "timed out"
        assert receiver.url not in "\n".join(daemon.raw)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0



def test_claim_mode_lists_every_session_with_its_owner(start: Callable[..., Daemon],
                                                       daemon_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    for sid in ("a", "b", "c"):
        proc = subprocess.run([sys.executable, "-m", "app", "sessions", "add", sid],
                              env=daemon_env, capture_output=True, text=True, check=False,
                              cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
    replicas = [start(PORT=str(free_port()), SESSIONKEEPER_MAX_SESSIONS="1",
                      SESSIONKEEPER_HTTP_TOKEN=TOKEN,
                      SESSIONKEEPER_PROFILE_DIR=str(tmp_path / f"r{i}" / "profiles"),
                      SESSIONKEEPER_DATA_DIR=str(tmp_path / f"r{i}" / "state"))
                for i in range(2)]
    claimed = [r.wait_for("session_claimed", 30)["session_id"] for r in replicas]
    assert len(set(claimed)) == 2
    [unclaimed] = {"a", "b", "c"} - set(claimed)
    views = [get(r, "/api/sessions", TOKEN).json() for r in replicas]
    for i, view in enumerate(views):
        assert view["claim_mode"] and view["database_error"] is None
        by_id = {f["session_id"]: f for f in view["sessions"]}
        assert set(by_id) == {"a", "b", "c"}
        mine, theirs = by_id[claimed[i]], by_id[claimed[1 - i]]
        assert mine["run_here"] and mine["state"] is not None
        assert mine["lease_holder"] == view["owner"]
        assert not theirs["run_here"] and theirs["state"] is None
        assert theirs["lease_holder"] == views[1 - i]["owner"]
        assert by_id[unclaimed]["lease_holder"] is None
    html = get(replicas[0], "/", TOKEN).body.decode()
    assert html.count('class="session"') == 3 and "claim mode" in html
    assert f">{views[1]['owner']}<" in html
    for replica in replicas:
        replica.signal(signal.SIGTERM)
    for replica in replicas:
        assert replica.wait_exit(30) == 0


@pytest.mark.anyio
async def test_failed_snapshot_goes_to_the_webhook_and_counts() -> None:
    with WebhookReceiver("ok") as receiver:
        metrics = Metrics()
        webhook = Webhook(receiver.url, 2.0, backoff=0.05)
        await webhook.start()
        try:
            log = EventLog(get_logger(session_id="s1"), "s1", "host-1", metrics, webhook)
            log.error("snapshot_failed", kind="periodic", reason="disk gone",
                      profile=Path("/data/profile"))  # not JSON by itself: sent as its text
            log.info("state_changed", state="qr_required", previous="restoring",
                     qr_payload="2@secret")
            log.info("ready")  # not a webhook event
        finally:
            await webhook.stop(drain=5)
    bodies = receiver.received
    assert [b["event"] for b in bodies] == ["snapshot_failed", "state_changed"]
    assert bodies[0]["session_id"] == "s1" and bodies[0]["reason"] == "disk gone"
    assert bodies[0]["owner"] == "host-1" and bodies[0]["level"] == "error"
    assert bodies[0]["profile"] == "/data/profile"
    assert "qr_payload" not in bodies[1]
    m = metric_samples(metrics.exposition().decode())
    assert m[("sessionkeeper_errors_total", (("kind", "snapshot_failed"),))] == 1


@pytest.mark.anyio
async def test_snapshot_committed_line_and_metrics(pool: asyncpg.Pool, profile: ProfileTree,
                                                   options: VaultOptions) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        result = await save_snapshot(pool, "s1", profile.root, options, kind="periodic")
    finally:
        configure_logging("info", "json")
    [line] = [json.loads(x) for x in out.getvalue().splitlines()
              if json.loads(x)["event"] == "snapshot_committed"]
    for field in ("session_id", "generation", "files", "raw_bytes", "bytes_uploaded",
                  "chunks_new", "chunks_reused", "duration_ms"):
        assert field in line, field
    assert line["session_id"] == "s1" and line["generation"] == 1
    assert line["raw_bytes"] == result.bytes_raw > 0 and line["chunks_new"] > 0
    metrics = Metrics()
    metrics.snapshot_committed(result)
    m = metric_samples(metrics.exposition().decode())
    assert m[("sessionkeeper_snapshot_bytes_uploaded_total", (("session", "s1"),))] == \
        result.bytes_uploaded > 0
    assert m[("sessionkeeper_snapshot_chunks_total", (("result", "new"), ("session", "s1")))] \
        == result.chunks_new


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_qr_log_line_by_output_and_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        log_qr(get_logger(session_id="s1"), "qr_required", "2@abc", enabled=True)
        log_qr(get_logger(session_id="s1"), "qr_rotated", "2@def", enabled=False)
        tty = _Tty()
        monkeypatch.setattr(sys, "stdout", tty)
        log_qr(get_logger(session_id="s1"), "qr_rotated", "2@ghi", enabled=True)
    finally:
        configure_logging("info", "json")
    first, second, third = (json.loads(x) for x in out.getvalue().splitlines())
    assert first["qr_payload"] == "2@abc" and first["qr_logged"] == "json"
    assert "qr_payload" not in second and "2@def" not in out.getvalue()
    assert third["qr_logged"] == "terminal" and "qr_payload" not in third
    assert len(tty.getvalue().splitlines()) >= 8


def test_page_escapes_what_it_shows() -> None:
    evil = '<script>alert("x")</script>'
    html = render_page({"owner": evil, "claim_mode": True, "database_error": evil,
                        "sessions": [{
                            "session_id": 'a"b<c', "state": None, "run_here": False,
                            "qr_available": True, "qr_serial": 3, "lease_holder": evil,
                            "last_snapshot": None, "generations_kept": 2}]})
    assert evil not in html and "&lt;script&gt;" in html
    assert 'data-session="a&quot;b&lt;c"' in html
    assert "token" not in html  # the page's requests carry the cookie (tests/test_operator_page.py)



@pytest.mark.parametrize("var,value,accepts", [
    ("SESSIONKEEPER_HTTP_TOKEN", "too-short", "at least 16 characters"),
    ("SESSIONKEEPER_WEBHOOK_URL", "ftp://hooks.example/s3cr3t", "http:// or https://"),
    ("SESSIONKEEPER_WEBHOOK_TIMEOUT", "0", "0.1 to 60"),
    ("SESSIONKEEPER_LOG_QR", "maybe", "true or false"),
])
def test_bad_settings_are_one_line_without_the_secret(monkeypatch: pytest.MonkeyPatch, var: str,
                                                      value: str, accepts: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert var in message and accepts in message and "\n" not in message
    if var in ("SESSIONKEEPER_HTTP_TOKEN", "SESSIONKEEPER_WEBHOOK_URL"):
        assert value not in message
