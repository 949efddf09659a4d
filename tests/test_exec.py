"""`sessionkeeper exec -- CMD`: a bot's own Chromium on the kept profile, end to end.

The child (tests/support/exec_child.py) runs Playwright's persistent context on the demo site
in the folder exec restored; it prints `exec_child_*` JSON lines on the same stdout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.drivers.child import exit_code_of, group_members
from tests.support.daemon import ROOT, Daemon, link_demo, process_table
from tests.support.vault_db import generations, inspect_generation, sql

CHILD = str(ROOT / "tests" / "support" / "exec_child.py")


@pytest.fixture
def demo_message_rate() -> str:
    # The page writes nothing of its own: the child's writes are what the tests look for.
    return "0"


@pytest.fixture
def exec_child(daemon_env: dict[str, str]) -> Iterator[Callable[..., Daemon]]:
    """Starts `python -m app exec -- python exec_child.py` (env overrides as keywords)."""
    started: list[Daemon] = []

    def launch(*flags: str, **overrides: str) -> Daemon:
        env = {**daemon_env, "SESSIONKEEPER_SNAPSHOT_INTERVAL": "30", **overrides}
        daemon = Daemon(env, "exec", *flags, "--", sys.executable, CHILD)
        started.append(daemon)
        return daemon

    yield launch
    for daemon in started:
        daemon.kill_all()


def processes_using(profile: Path) -> list[int]:
    """Processes whose command line names the profile (a Chromium left running on it)."""
    needle = str(profile).encode()
    return [pid for pid, (_, cmd) in process_table().items()
            if any(needle in arg for arg in cmd) and pid != os.getpid()]


def wait_gone(profile: Path, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_using(profile)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_exec_keeps_a_bot_session_across_a_wiped_folder(
        exec_child: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
        tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    profile = Path(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    first = exec_child(CHILD_EXIT_CODE="7", CHILD_MARKER="4242")
    started = first.wait_for("exec_child_started", 60)
    assert started["profile"] == str(profile.absolute()) and started["session"] == "e2e"
    first.wait_for("exec_child_state", 60, state="qr")
    first.wait_for("qr_required", 30)
    assert link_demo(demo_port)["linked"]
    first.wait_for("exec_child_state", 30, state="ready")
    # No page to read: the login key reached the profile's localStorage, read from a copy.
    first.wait_for("ready", 30)
    checkpoint = first.wait_for("login_checkpoint", 30)
    assert generations(database_url) == [
        {"generation": checkpoint["generation"], "kind": "login", "login_state": "ready"}]

    first.signal(signal.SIGTERM)
    assert first.wait_exit(30) == 7  # the child's exit code comes through
    wrote = first.wait_for("exec_child_wrote")
    exited = first.wait_for("child_exited", code=7)
    done = first.wait_for("shutdown_completed")
    assert exited["_t"] > wrote["_t"] and done["_t"] > exited["_t"]
    assert done["changed"] and generations(database_url)[-1] == {
        "generation": done["generation"], "kind": "shutdown", "login_state": "ready"}
    first.wait_for("lease_released")
    # The child's last writes, made after the stop signal, are in the final generation.
    final = inspect_generation(database_url, done["generation"], tmp_path / "g", demo_port)
    assert final["state"] == "ready" and final["lastMessage"] == 4242

    shutil.rmtree(profile)
    second = exec_child(CHILD_CRASH_AFTER="1", CHILD_MARKER="5151")
    restored = second.wait_for("session_restored", 60)
    assert restored["generation"] == done["generation"]
    state = second.wait_for("exec_child_state", 60, state="ready")
    assert state["last_message"] == 4242 and state["exec_marker"] == "4242"
    second.wait_for("ready", 30)
    # A child that crashes, leaving its Chromium behind: that Chromium is stopped, the final
    # snapshot taken, and the child's exit code passed on.
    assert second.wait_exit(40) == 3
    assert "qr_required" not in second.names()
    assert not [e for e in second.events if e.get("event") == "exec_child_state"
                and e.get("state") == "qr"]
    crash = second.wait_for("child_exited", code=3, by="itself")
    after = second.wait_for("shutdown_completed")
    assert after["_t"] > crash["_t"] and after["changed"]
    assert not wait_gone(profile)
    crashed = inspect_generation(database_url, after["generation"], tmp_path / "g2", demo_port)
    assert crashed["state"] == "ready" and crashed["lastMessage"] == 5151


def test_exec_stop_signals_and_exit_codes(exec_child: Callable[..., Daemon],
                                          daemon_env: dict[str, str], tmp_path: Path) -> None:
    profile = Path(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    # A child killed by a signal: 128 + N, as a shell reports it.
    killed = exec_child(CHILD_KILL_SELF_ON_STOP="1")
    killed.wait_for("exec_child_state", 60, state="qr")
    killed.signal(signal.SIGINT)
    assert killed.wait_exit(30) == 128 + signal.SIGKILL
    assert killed.wait_for("child_exited")["signal"] == "SIGKILL"
    killed.wait_for("shutdown_completed")

    # A child that ignores the stop signal is killed when its share of the shutdown timeout
    # is over; the rest is kept for the final snapshot.
    stubborn = exec_child(CHILD_IGNORE_STOP="1", SESSIONKEEPER_SHUTDOWN_TIMEOUT="4")
    stubborn.wait_for("exec_child_state", 60, state="qr")
    stubborn.signal(signal.SIGTERM)
    stubborn.wait_for("exec_child_ignored_stop", 10)
    assert stubborn.wait_exit(30) == 128 + signal.SIGKILL
    stopped = stubborn.wait_for("child_exited")
    assert stopped["by"] == "SIGKILL after the stop timeout"
    done = stubborn.wait_for("shutdown_completed")
    # Its share (2 s) waited in full, and the driver stopped within the shutdown timeout
    # (4 s), so the final snapshot had the rest.
    assert 2000 <= done["driver_stop_ms"] < 4000
    assert not wait_gone(profile)

    # A second signal ends the process at once, and the child's whole group with it.
    hasty = exec_child(CHILD_IGNORE_STOP="1")
    child = hasty.wait_for("exec_child_started", 60)
    hasty.wait_for("exec_child_state", 60, state="qr")
    hasty.signal(signal.SIGTERM)
    hasty.wait_for("exec_child_ignored_stop", 10)
    sent = time.monotonic()
    # The other signal: a repeat of the same one within 2 s would be the same request.
    hasty.signal(signal.SIGINT)
    assert hasty.wait_exit(10) == -signal.SIGINT
    assert time.monotonic() - sent < 3
    assert "shutdown_completed" not in hasty.names()
    assert not wait_gone(profile, 5)
    assert not group_members(child["pgid"])  # zombies waiting for init aside


def test_exec_lost_lease_stops_the_child_without_writing(
        exec_child: Callable[..., Daemon], daemon_env: dict[str, str],
        database_url: str) -> None:
    profile = Path(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    daemon = exec_child()
    daemon.wait_for("exec_child_state", 60, state="qr")
    before = generations(database_url)
    sql(database_url, "UPDATE sessions SET owner = 'intruder', lease_token = lease_token + 1,"
        " lease_expires_at = now() + interval '1 hour' WHERE id = 'e2e'")
    lost = daemon.wait_for("lease_lost", 15)
    assert "another process" in lost["reason"]
    daemon.wait_for("waiting_for_lease", 15, holder="intruder")
    assert not wait_gone(profile)
    assert generations(database_url) == before
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0  # stopped before a child ran again: a clean stop


def test_exec_usage_errors(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {**cli_env, "SESSIONKEEPER_TARGET": "demo",
           "SESSIONKEEPER_PROFILE_DIR": str(tmp_path / "p")}
    no_command = subprocess.run([sys.executable, "-m", "app", "exec", "--"], env=env,
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert no_command.returncode == 2
    assert no_command.stderr.strip().count("\n") == 0 and "exec needs a command" in \
        no_command.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "app", "exec", "--session", "nocmd", "--",
         str(tmp_path / "no-such-bot")], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60)
    assert missing.returncode == 127, missing.stderr
    assert '"child_failed_to_start"' in missing.stdout and "Traceback" not in missing.stderr


def test_exit_code_of() -> None:
    assert exit_code_of(0) == 0 and exit_code_of(7) == 7
    assert exit_code_of(-signal.SIGTERM) == 143 and exit_code_of(-signal.SIGKILL) == 137


def test_exec_a_login_key_that_goes_is_a_logout(exec_child: Callable[..., Daemon],
                                                daemon_env: dict[str, str],
                                                database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    # After the key reached the disk (about 5 s) and a peek (every 5 s) saw it.
    daemon = exec_child(CHILD_LOGOUT_AFTER="14")
    daemon.wait_for("exec_child_state", 60, state="qr")
    assert link_demo(demo_port)["linked"]
    checkpoint = daemon.wait_for("login_checkpoint", 30)
    daemon.wait_for("exec_child_logged_out", 30)
    out = daemon.wait_for("logged_out", 30)
    assert out["reason"] == "logout" and checkpoint["generation"] in out["generations_marked"]
    assert {g["login_state"] for g in generations(database_url)} == {"logged_out"}
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0
