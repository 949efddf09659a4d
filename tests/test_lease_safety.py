"""The lease under a partition (issue 12, items 1, 4 and 15), with the real daemon, Chromium and
PostgreSQL; the partition is a TCP proxy that stops answering (tests/support/pgproxy.py).

- A black-holed database (connections hang, not refused) stops the browser within the lease
  TTL: no query may wait on a half-open connection while another replica takes the lease.
- The same process taking the lease back with nobody in between keeps its local profile,
  which is newer than the newest generation, instead of restoring over it.
- A profile already on disk at boot is kept when its marker matches the database, and
  replaced when the database holds something newer.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from app.settings import Settings
from app.store.db import open_pool
from app.vault.restore import restore_profile
from tests.support.daemon import (
    DAEMON_SESSION,
    Daemon,
    browser_pids,
    login,
)
from tests.support.pgproxy import PgProxy
from tests.support.vault_db import generations, sql

SESSION = DAEMON_SESSION
# Written into the live profile by the test: data newer than any generation.
NEWER = "Default/File System/sk-newer-local-data"




def _restored(url: str, generation: int, target: Path) -> Path:
    """A generation restored into target, to look at its files."""
    async def go() -> None:
        settings = Settings(database_url=url, data_dir=target.parent / "st")  # type: ignore[arg-type]
        async with open_pool(settings, migrate=False) as pool:
            await restore_profile(pool, SESSION, target, generation=generation)

    asyncio.run(go())
    return target


def _events(daemon: Daemon, name: str) -> list[dict[str, object]]:
    return [e for e in daemon.events if e.get("event") == name]


def _wait_count(daemon: Daemon, name: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(_events(daemon, name)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_events(daemon, name)) >= count, f"{name} x{count}:\n{daemon.log_text()}"


def test_a_black_holed_database_stops_the_browser_within_the_ttl_and_keeps_local_data(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
        proxy: PgProxy, tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    ttl = 6.0
    daemon = start(DATABASE_URL=proxy.url_for(database_url), SESSIONKEEPER_LEASE_TTL=str(ttl),
                   SESSIONKEEPER_SNAPSHOT_INTERVAL="600")
    login(daemon, demo_port)
    before = generations(database_url)
    profile = Path(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    proxy.blackhole()
    holed = time.monotonic()
    # Newer local data than any generation (messages, key ratchets): it must survive.
    (profile / NEWER).parent.mkdir(parents=True, exist_ok=True)
    (profile / NEWER).write_text("written during the partition")
    lost = daemon.wait_for("lease_lost", ttl + 10)
    # The last renewal that got through was sent before the partition began.
    assert lost["_t"] - holed <= ttl + 1.5, (lost, daemon.log_text())
    deadline = time.monotonic() + 10
    while browser_pids(daemon.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not browser_pids(daemon.proc.pid), "Chromium still runs without a lease"
    gone = time.monotonic() - holed
    assert gone <= ttl + 3, f"the browser ran {gone:.1f} s into a {ttl:.0f} s lease"
    assert daemon.proc.poll() is None

    proxy.heal()
    _wait_count(daemon, "lease_acquired", 2, 60)
    tokens = [e["fencing_token"] for e in _events(daemon, "lease_acquired")]
    assert tokens[1] == tokens[0] + 1  # nobody held it in between
    kept = daemon.wait_for("local_profile_kept", 30)
    assert kept["generation"] == before[-1]["generation"]
    assert (profile / NEWER).exists(), "the newer local profile was restored over"
    _wait_count(daemon, "ready", 2, 60)
    assert daemon.names().count("qr_required") == 1
    # The kept local data goes into the next generation ("snapshot it instead").
    deadline = time.monotonic() + 60
    while generations(database_url)[-1]["generation"] == before[-1]["generation"] \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    newest = generations(database_url)[-1]["generation"]
    assert newest > before[-1]["generation"]
    assert (_restored(database_url, newest, tmp_path / "check") / NEWER).exists()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(40) == 0


def test_a_profile_on_disk_at_boot_is_kept_or_replaced_by_its_marker(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    profile = Path(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    first = start()
    login(first, demo_port)
    first.stop_cleanly(40)
    newest = generations(database_url)[-1]["generation"]
    # A restart in place (a volume): data written after the final snapshot survives.
    (profile / NEWER).parent.mkdir(parents=True, exist_ok=True)
    (profile / NEWER).write_text("after the final snapshot")
    second = start()
    kept = second.wait_for("local_profile_kept", 60)
    assert kept["generation"] == newest
    assert "session_restored" not in second.names()
    second.wait_for("ready", 60)
    assert (profile / NEWER).exists()
    second.stop_cleanly(40)

    # The database moves on without this disk (another replica committed a generation).
    newest = generations(database_url)[-1]["generation"]
    marker = next(profile.parent.glob(f".{profile.name}.sessionkeeper/*marker*"))
    data = json.loads(marker.read_text())
    assert data["generation"] == newest
    sql(database_url, "UPDATE sessions SET lease_token = lease_token + 5 WHERE id = $1", SESSION)
    data["generation"] = newest - 1  # this disk is behind the database
    marker.write_text(json.dumps(data))
    (profile / NEWER).unlink()
    (profile / "Default" / "sk-stale-local-data").write_text("older than the database")
    third = start()
    restored = third.wait_for("session_restored", 60)
    assert restored["generation"] == newest
    assert "local_profile_kept" not in third.names()
    assert not (profile / "Default" / "sk-stale-local-data").exists()
    third.wait_for("ready", 60)
    third.stop_cleanly(40)
