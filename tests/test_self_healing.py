"""Self-healing restore (issue 12, item 14), with the real daemon, Chromium and PostgreSQL.

A generation captured logged in that comes up asking for a QR code when restored (here: a
manual snapshot of a copy whose site data is gone, as a torn or incomplete capture would be)
is marked, not deleted, and the previous logged-in generation is restored instead; each step
is an event. With no fallback left the QR code means what it says.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.support.daemon import ROOT, Daemon, login
from tests.support.vault_db import generations, sql

SESSION = "e2e"
# What the demo site keeps its login in; gone from a copy, the copy asks for a QR code.
SITE_DATA = ("Default/IndexedDB", "Default/Local Storage", "Default/Cookies",
             "Default/Cookies-journal", "Default/Network/Cookies",
             "Default/Network/Cookies-journal")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _damaged_generation(env: dict[str, str], good: int, work: Path, n: int = 0) -> int:
    """A manual (unlabelled, so logged-in) generation of `good` without its site data (the
    n-th such: each differs from the others, or it would be no new generation)."""
    copy = work / "damaged"
    done = _cli(env, "restore", SESSION, "--profile", str(copy), "--generation", str(good))
    assert done.returncode == 0, done.stderr
    for rel in SITE_DATA:
        path = copy / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (copy / "Default" / "File System").mkdir(parents=True, exist_ok=True)
    (copy / "Default" / "File System" / f"damaged-{n}").write_text(str(n))
    done = _cli(env, "snapshot", SESSION, "--profile", str(copy))
    assert done.returncode == 0, done.stderr
    return int(generations(env["DATABASE_URL"])[-1]["generation"])


def _logged_in_then_damaged(start: Callable[..., Daemon], env: dict[str, str], work: Path,
                            damaged: int) -> tuple[int, list[int]]:
    """A login (its generation, `good`), then `damaged` newer generations that ask for a QR
    code when restored; the profile folder wiped, as in a new container."""
    first = start()
    login(first, int(env["SESSIONKEEPER_DEMO_PORT"]))
    first.stop_cleanly(40)
    good = int(first.wait_for("shutdown_completed")["generation"])
    bad = [_damaged_generation(env, good, work / f"w{i}", i) for i in range(damaged)]
    assert len(set(bad)) == damaged and min(bad) > good
    shutil.rmtree(env["SESSIONKEEPER_PROFILE_DIR"])
    return good, bad


def test_a_restored_login_that_asks_for_a_qr_code_falls_back_to_the_previous_one(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
        tmp_path: Path) -> None:
    good, bad = _logged_in_then_damaged(start, daemon_env, tmp_path, 2)

    second = start()
    assert second.wait_for("session_restored", 60)["generation"] == bad[1]
    steps = [second.wait_for("restore_fallback", 60, generation=g) for g in reversed(bad)]
    assert steps[0]["next_generation"] == bad[0] and steps[1]["next_generation"] == good, \
        (good, bad, steps, generations(database_url))
    assert [s["attempt"] for s in steps] == [1, 2]
    second.wait_for("ready", 60)
    restored = [e["generation"] for e in second.events if e.get("event") == "session_restored"]
    assert restored == [bad[1], bad[0], good]
    # The QR pages of the bad generations were no logout: nothing marked logged out.
    assert "logged_out" not in second.names() and "qr_required" not in second.names()
    marked = sql(database_url, "SELECT array_agg(generation ORDER BY generation) FROM snapshots"
                 " WHERE session_id = $1 AND restore_failed_at IS NOT NULL", SESSION)
    assert list(marked) == bad  # marked, not deleted
    second.stop_cleanly(40)

    # The next boot skips them at once.
    shutil.rmtree(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    third = start()
    newest_good = generations(database_url)[-1]["generation"]
    assert third.wait_for("session_restored", 60)["generation"] == newest_good
    third.wait_for("ready", 60)
    assert "restore_fallback" not in third.names()
    third.stop_cleanly(40)


def test_with_no_fallback_left_the_qr_code_is_a_logout(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
        tmp_path: Path) -> None:
    _good, [bad] = _logged_in_then_damaged(start, daemon_env, tmp_path, 1)
    second = start(SESSIONKEEPER_RESTORE_FALLBACKS="0")
    assert second.wait_for("session_restored", 60)["generation"] == bad
    out = second.wait_for("logged_out", 60)
    assert out["generation"] == bad
    assert "restore_fallback" not in second.names()
    second.stop_cleanly(40)
