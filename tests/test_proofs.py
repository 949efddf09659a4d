"""Promises that no test used to run (issue 17): each test here fails when its line breaks.

- A QR page never replaces a logged-in generation, and restore prefers logged-in ones: a
  session logged in, then shown a QR page that names no logout for longer than the snapshot
  interval and through SIGTERM, restores the logged-in generation on a wiped disk. The site
  is a small page of this test's own on the `custom` target (any site: selectors only).
- The untested paths that matter: one of several sessions failing while the others go on;
  every generation corrupt; a stale SingletonLock of another host removed.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from tests.support.daemon import Daemon, free_port, link_demo, login
from tests.support.profile_tree import ProfileTree
from tests.support.vault_db import generations, sql

PAGE = b"""<!doctype html><title>login</title><div id="app">loading</div>
<script>
async function tick() {
  const s = await (await fetch('/api/state')).json();
  if (s.linked && !localStorage.getItem('token')) localStorage.setItem('token', 't' + Date.now());
  const app = document.getElementById('app');
  if (s.force_qr || !localStorage.getItem('token'))
    app.innerHTML = '<div id="qr" data-ref="qr-' + Math.floor(Date.now() / 20000) + '">scan</div>';
  else app.innerHTML = '<div id="chats">chats</div>';
}
setInterval(tick, 300); tick();
</script>"""


class LoginSite:
    """A site that logs in once `linked` (the login kept in localStorage), and shows a QR
    page to everyone while `force_qr` (a screen that names no logout)."""

    def __init__(self) -> None:
        self.state = {"linked": False, "force_qr": False}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(site.state).encode() if self.path == "/api/state" else PAGE
                kind = "application/json" if self.path == "/api/state" else "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[LoginSite]:
    s = LoginSite()
    yield s
    s.close()


def test_a_qr_page_through_sigterm_never_replaces_the_login(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
        site: LoginSite) -> None:
    custom = {"SESSIONKEEPER_TARGET": "custom", "SESSIONKEEPER_TARGET_URL": site.url,
              "SESSIONKEEPER_QR_SELECTOR": "#qr", "SESSIONKEEPER_READY_SELECTOR": "#chats",
              "SESSIONKEEPER_LOGIN_SETTLE": "1", "SESSIONKEEPER_SNAPSHOT_INTERVAL": "30"}
    first = start(**custom)
    first.wait_for("qr_required", 60)
    site.state["linked"] = True
    first.wait_for("ready", 30)
    checkpoint = first.wait_for("login_checkpoint", 30)
    # The site shows its QR page now, naming no logout: a glitch, or a logout we cannot tell.
    site.state["force_qr"] = True
    first.wait_for("state_changed", 30, state="qr_required")
    skipped = first.wait_for("snapshot_skipped", 60, kind="periodic")  # > one interval
    assert "qr" in skipped["reason"]
    first.stop_cleanly(40)
    final = first.wait_for("shutdown_completed")
    assert final["generation"] is None  # the QR-state final capture was held back too
    labels = [g["login_state"] for g in generations(database_url)]
    assert labels and "qr" not in labels, labels  # no QR generation was committed

    # A new container (wiped disk), the site back to normal, no server-side login any more:
    # only the restored profile can log in.
    shutil.rmtree(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    site.state.update(linked=False, force_qr=False)
    second = start(**custom)
    restored = second.wait_for("session_restored", 60)
    assert restored["generation"] == checkpoint["generation"]
    second.wait_for("ready", 60)
    assert "qr_required" not in second.names()
    second.stop_cleanly(40)


@pytest.mark.anyio
async def test_restore_prefers_an_older_login_to_a_newer_qr_capture(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path) -> None:
    await save_snapshot(pool, "s", profile.root, options, login_state="ready")
    profile.add_messages(20)
    qr = await save_snapshot(pool, "s", profile.root, options, login_state="qr")
    assert qr.generation == 2  # committed: no keep_login (a capture of an import, say)
    result = await restore_profile(pool, "s", tmp_path / "restored")
    assert result.generation == 1 and result.login_state == "ready"


FAULTY_ONE = """
import sys
import app.session as session
original = session.SessionRunner.ready_reached
async def ready_reached(self):
    await original(self)
    if self.session_id == "bad":
        raise RuntimeError("injected fault in one session")
session.SessionRunner.ready_reached = ready_reached
from app.cli import main
sys.exit(main(["run"]))
"""


def test_one_failing_session_of_several_leaves_the_others_running(
        daemon_env: dict[str, str], database_url: str) -> None:
    """The fault is injected by patching one method in the daemon's process (named as such)."""
    env = {**daemon_env, "SESSIONKEEPER_SESSION_IDS": "good,bad",
           "SESSIONKEEPER_DEMO_LINK_AFTER": "0.5"}
    daemon = Daemon(env, command=[sys.executable, "-c", FAULTY_ONE])
    try:
        failed = daemon.wait_for("session_failed", 90, session_id="bad")
        assert "injected fault" in failed["reason"] and failed["retry_in_s"] > 0
        daemon.wait_for("login_checkpoint", 60, session_id="good")
        time.sleep(1)
        assert daemon.proc.poll() is None
        code, body = daemon.readyz()
        assert code == 503  # not every session is ready
        states = {s["session_id"]: s for s in body["sessions"]}
        assert states["good"]["ready"] and not states["bad"]["ready"]
        # The failed one starts over after its pause (and fails again here).
        daemon.wait_for("lease_acquired", 30, session_id="bad", fencing_token=2)
        daemon.stop_cleanly(40)
    finally:
        daemon.kill_all()


def test_every_generation_corrupt_boots_with_an_empty_profile(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    first = start()
    login(first, demo_port)
    first.stop_cleanly(40)
    # Every stored chunk damaged (bit rot, a bad restore of the database).
    sql(database_url, "UPDATE chunks SET data = overlay(data placing '\\xdeadbeef'::bytea "
        "from 5) WHERE session_id = 'e2e'")
    shutil.rmtree(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    second = start()
    failed = second.wait_for("restore_failed", 60)
    assert "no generation" in failed["reason"]
    corrupt = [e for e in second.events if e.get("event") == "restore_generation_corrupt"]
    assert len(corrupt) == len(generations(database_url))
    second.wait_for("qr_required", 60)  # an empty profile: log in again, nothing crashed
    assert second.proc.poll() is None
    second.stop_cleanly(40)


def test_a_stale_singleton_lock_of_another_host_is_removed(
        start: Callable[..., Daemon], daemon_env: dict[str, str]) -> None:
    profile = Path(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    profile.mkdir(parents=True)
    # Left by a Chromium of the previous container (another host name) on a volume.
    (profile / "SingletonLock").symlink_to("old-container-4242")
    (profile / "SingletonCookie").symlink_to("1234567890")
    daemon = start()
    removed = daemon.wait_for("singleton_files_removed", 60)
    assert set(removed["files"]) >= {"SingletonLock", "SingletonCookie"}
    daemon.wait_for("qr_required", 60)  # Chromium started on the profile
    lock = profile / "SingletonLock"  # Chromium's own now, if any: not the stale one
    assert not lock.is_symlink() or "old-container" not in str(lock.readlink())
    link_demo(int(daemon_env["SESSIONKEEPER_DEMO_PORT"]))
    daemon.wait_for("ready", 30)
    daemon.stop_cleanly(40)
