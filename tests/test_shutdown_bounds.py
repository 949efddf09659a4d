"""Shutdown is bounded and always runs (issue 12, items 10, 11 and 13), with the real daemon,
Chromium and PostgreSQL.

- A database that stops answering at SIGTERM (a black hole, tests/support/pgproxy.py) must
  not hold the process past SESSIONKEEPER_SHUTDOWN_TIMEOUT: every await on the way out is
  bounded (the hand-over mark, Chromium's close, the pool's close, the webhook drain).
- An unexpected error in the run phase still goes through the shutdown path: the final
  snapshot is taken and the lease released. The error is injected by patching one method in
  the daemon's process (named as such: no real bug is at hand to trigger it).
- A local disk error is named for what it is, not `database_unavailable`.
- A log write to a stdout that went away never costs the final snapshot.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import ROOT, Daemon, link_demo, login
from tests.support.pgproxy import PgProxy
from tests.support.vault_db import generations, sql

# Runs the daemon with one method replaced by one that raises once the session is ready.
FAULTY_DAEMON = """
import sys
import app.session as session
original = session.SessionRunner.ready_reached
async def ready_reached(self):
    await original(self)
    raise RuntimeError("injected fault: a bug in the run phase")
session.SessionRunner.ready_reached = ready_reached
from app.cli import main
sys.exit(main(["run"]))
"""




def test_shutdown_fits_its_timeout_with_a_black_holed_database(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
        proxy: PgProxy) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    timeout = 8.0
    daemon = start(DATABASE_URL=proxy.url_for(database_url), SESSIONKEEPER_LEASE_TTL="60",
                   SESSIONKEEPER_SHUTDOWN_TIMEOUT=str(timeout))
    login(daemon, demo_port)
    proxy.blackhole()
    time.sleep(0.5)
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    try:
        code = daemon.wait_exit(timeout + 20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout + 20:.0f} s after SIGTERM:\n{daemon.log_text()}")
    took = time.monotonic() - sent
    assert took <= timeout + 2.5, f"shutdown took {took:.1f} s of {timeout:.0f}"
    assert code != 0  # the final snapshot could not land: not a clean exit
    names = daemon.names()
    assert "shutdown_started" in names
    assert "final_snapshot_failed" in names or "shutdown_timeout" in names
    assert not any("Traceback" in line for line in daemon.raw), daemon.log_text()


def test_an_unexpected_error_still_takes_the_final_snapshot(
        daemon_env: dict[str, str], database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    watched = Daemon(daemon_env, command=[sys.executable, "-c", FAULTY_DAEMON])
    try:
        watched.wait_for("qr_required", 60)
        assert link_demo(demo_port)["linked"]
        failed = watched.wait_for("session_failed", 30)
        assert "injected fault" in failed["reason"]
        code = watched.wait_exit(60)
        assert code == 1, watched.log_text()
        final = watched.wait_for("shutdown_completed", 1)
        assert final["generation"] is not None
        watched.wait_for("lease_released", 1)
        assert sql(database_url, "SELECT owner FROM sessions WHERE id = $1", "e2e") is None
        assert generations(database_url)[-1]["generation"] == final["generation"]
    finally:
        watched.kill_all()


def test_a_local_disk_error_is_named_for_what_it_is(
        start: Callable[..., Daemon], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the profile's parent folder should be")
    daemon = start(SESSIONKEEPER_PROFILE_DIR=str(blocker / "profile"))
    code = daemon.wait_exit(60)
    assert code not in (0, None)
    names = daemon.names()
    assert "database_unavailable" not in names, daemon.log_text()
    assert not any("Traceback" in line for line in daemon.raw), daemon.log_text()
    assert any(e.get("level") == "error" and "not-a-folder" in str(e)
               for e in daemon.events), daemon.log_text()


def test_a_closed_stdout_never_costs_the_final_snapshot(
        daemon_env: dict[str, str], database_url: str) -> None:
    env = {**daemon_env, "SESSIONKEEPER_DEMO_LINK_AFTER": "0.5",
           "SESSIONKEEPER_DEMO_MESSAGE_RATE": "600"}  # changes for the final snapshot
    proc = subprocess.Popen([sys.executable, "-m", "app", "run"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            if '"login_checkpoint"' in line or time.monotonic() > deadline:
                break
        before = generations(database_url)[-1]["generation"]
        # The pipe the daemon logs into goes away (a log shipper that died).
        proc.stdout.close()
        time.sleep(4)  # Chromium is back after the checkpoint, and messages come in
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
        assert code == 0
        rows = generations(database_url)
        assert rows[-1]["generation"] > before and rows[-1]["kind"] == "shutdown"
        assert sql(database_url, "SELECT owner FROM sessions WHERE id = $1", "e2e") is None
    finally:
        Daemon.kill_tree(proc)
