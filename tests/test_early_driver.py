"""`run` spawns Playwright's driver before its own imports (app/entry.py, app/early_driver.py):
the daemon's browser uses that driver, and a run that ends early leaves none behind.

Not a timed test (scripts/bench-daemon measures spawn to ready): these check the order and the
clean-up, which a change could break without any test of the daemon noticing.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import psutil
import pytest

from app.entry import runs_daemon
from tests.support.daemon import ROOT, Daemon

# The daemon, with one method wrapped to report (named as such): right after the driver's
# spawn, which of the CLI's modules are imported and which driver processes run.
REPORTING_DAEMON = """
import json, sys
import psutil
import app.early_driver as early_driver
from app.entry import main
spawn = early_driver.EarlyDriver.spawn
def reporting_spawn(self):
    spawn(self)
    drivers = [p.pid for p in psutil.Process().children()
               if "run-driver" in p.cmdline()]
    print(json.dumps({"event": "test_driver_spawned", "drivers": drivers,
                      "imported": sorted(m for m in ("app.cli", "app.settings", "asyncpg",
                                                     "app.supervisor") if m in sys.modules)}),
          flush=True)
early_driver.EarlyDriver.spawn = reporting_spawn
main(["run"])
"""


def drivers_of(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)
            if "run-driver" in " ".join(p.cmdline())]


@pytest.mark.parametrize(("argv", "expected"), [
    (["run"], True), (["--json", "run"], True), (["run", "--json"], True),
    (["run", "--help"], False), (["--help", "run"], False), (["--version"], False),
    (["status"], False), (["exec", "--", "node", "bot.js", "run"], False), ([], False),
])
def test_only_run_spawns_a_driver_early(argv: list[str], expected: bool) -> None:
    assert runs_daemon(argv) is expected


def test_the_daemons_browser_uses_the_driver_spawned_before_the_imports(
        daemon_env: dict[str, str]) -> None:
    daemon = Daemon(daemon_env, command=[sys.executable, "-c", REPORTING_DAEMON])
    try:
        spawned = daemon.wait_for("test_driver_spawned", 60)
        assert spawned["imported"] == [], "imported before the driver's spawn"
        assert len(spawned["drivers"]) == 1
        daemon.wait_for("browser_started", 60)
        assert drivers_of(daemon.proc.pid) == spawned["drivers"]  # no second driver
        daemon.stop_cleanly()
    finally:
        daemon.kill_all()
    assert not psutil.pid_exists(spawned["drivers"][0]) or \
        psutil.Process(spawned["drivers"][0]).status() == psutil.STATUS_ZOMBIE


def test_a_run_refused_at_once_stops_its_driver(daemon_env: dict[str, str]) -> None:
    mark = uuid.uuid4().hex
    env = {**daemon_env, "SESSIONKEEPER_SNAPSHOT_INTERVAL": "1", "SK_TEST_MARK": mark}
    proc = subprocess.run([sys.executable, "-m", "app", "run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "SESSIONKEEPER_SNAPSHOT_INTERVAL" in proc.stderr, \
        proc.stderr
    assert proc.stdout == ""
    deadline = time.monotonic() + 5
    while (left := marked_drivers(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


def marked_drivers(mark: str) -> list[int]:
    """Driver processes started with SK_TEST_MARK=mark in their environment."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "run-driver" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("SK_TEST_MARK") == mark:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found
