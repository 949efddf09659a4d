"""The daemon end to end: a real Chromium on the demo site, a real PostgreSQL, real signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tests.support.daemon import (
    DAEMON_SESSION,
    Daemon,
    browser_pids,
    free_port,
    link_demo,
    login,
    process_table,
)
from tests.support.vault_db import generations, inspect_generation, sql

SESSION = DAEMON_SESSION


def test_login_survives_a_redeploy(start: Callable[..., Daemon], daemon_env: dict[str, str],
                                   database_url: str, tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    first = start()
    login(first, demo_port)
    code, body = first.readyz()
    assert code == 200 and body["state"] == "ready"
    # No key set: the daemon says so, once, as a warning with what to do.
    warned = [e for e in first.events if e.get("event") == "encryption_disabled"]
    assert len(warned) == 1 and warned[0]["level"] == "warning"
    assert "SESSIONKEEPER_ENCRYPTION_KEY" in warned[0]["note"]
    time.sleep(3)  # the page writes chat messages meanwhile
    first.signal(signal.SIGTERM)
    assert first.wait_exit(30) == 0
    done = first.wait_for("shutdown_completed")
    gens = generations(database_url)
    assert gens[-1] == {"generation": done["generation"], "kind": "shutdown",
                        "login_state": "ready"}
    assert [g["kind"] for g in gens] == ["login", "shutdown"]

    shutil.rmtree(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    second = start()
    restored = second.wait_for("session_restored", 60)
    assert restored["generation"] == done["generation"]
    # `ready` says how long the boot took (README; scripts/bench-daemon reads it).
    assert second.wait_for("ready", 60)["since_start_ms"] > 0
    assert "qr_required" not in second.names()
    assert second.readyz()[0] == 200
    time.sleep(1)
    second.signal(signal.SIGTERM)
    assert second.wait_exit(30) == 0
    final = second.wait_for("shutdown_completed")["generation"]

    before = inspect_generation(database_url, done["generation"], tmp_path / "g1", demo_port)
    after = inspect_generation(database_url, final, tmp_path / "g2", demo_port)
    for info in (before, after):
        assert info["state"] == "ready"
        assert info["keyLength"] == 32 and info["avatarSize"] > 0
        assert info["cookie"] and info["localStorageToken"] == info["token"]
        assert info["messages"] > 0
    assert after["token"] == before["token"]
    # Nothing written before the first shutdown was lost.
    assert after["messages"] >= before["messages"] and after["lastMessage"] >= before["lastMessage"]


def test_sigkill_after_a_periodic_snapshot(start: Callable[..., Daemon],
                                          daemon_env: dict[str, str], database_url: str,
                                          tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    first = start(SESSIONKEEPER_SNAPSHOT_INTERVAL="30")
    login(first, demo_port)
    periodic = first.wait_for("snapshot_committed", 45, kind="periodic")
    first.kill_all()  # no final snapshot
    assert generations(database_url)[-1]["generation"] == periodic["generation"]

    shutil.rmtree(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    second = start()
    assert second.wait_for("session_restored", 60)["generation"] == periodic["generation"]
    second.wait_for("ready", 60)
    assert "qr_required" not in second.names()
    second.kill_all()
    info = inspect_generation(database_url, periodic["generation"], tmp_path / "p", demo_port)
    assert info["state"] == "ready" and info["messages"] > 0 and info["avatarSize"] > 0


def test_second_signal_exits_at_once(start: Callable[..., Daemon]) -> None:
    daemon = start()
    daemon.wait_for("qr_required", 60)
    daemon.signal(signal.SIGTERM)
    # Signals of one kind sent back to back merge into one; send the second once the first
    # has started the shutdown (closing Chromium and the final snapshot take a few 100 ms).
    daemon.wait_for("shutdown_started", 10)
    # A repeat of the same signal within 2 s is the same request (tests/test_signals.py);
    # the other signal ends the process at once.
    daemon.signal(signal.SIGINT)
    began = time.monotonic()
    code = daemon.wait_exit(10)
    assert code == -signal.SIGINT  # killed by the second signal, not a clean exit
    # Nothing of the ordered shutdown came after it (the bound only catches a hang).
    assert not {"shutdown_completed", "lease_released"} & set(daemon.names())
    assert time.monotonic() - began < 5


@pytest.mark.parametrize("overrides,needle", [
    ({"SESSIONKEEPER_CHROMIUM_PATH": "/nonexistent/chrome"}, "SESSIONKEEPER_CHROMIUM_PATH"),
    ({"PATH": "/nonexistent", "PLAYWRIGHT_BROWSERS_PATH": "/nonexistent"}, "no Chromium found"),
])
def test_no_chromium_is_one_line_exit_2(start: Callable[..., Daemon],
                                        overrides: dict[str, str], needle: str) -> None:
    daemon = start(**overrides)
    assert daemon.wait_exit(30) == 2
    errors = [line for line in daemon.raw if "error" in line.lower()]
    assert len(errors) == 1 and needle in errors[0], daemon.log_text()
    assert not any("Traceback" in line for line in daemon.raw)


class PrivateServer:
    """A PostgreSQL of this test's own (embedded), so it can be stopped and started."""

    def __init__(self, data: Path) -> None:
        import pgserver

        self.server = pgserver.get_server(str(data), cleanup_mode="delete")
        self.data = data
        self.url = self.server.get_uri()
        self.opts = (data / "postmaster.opts").read_text()

    def _pg_ctl(self, *args: str) -> None:
        from pgserver import _commands

        _commands.pg_ctl(list(args), pgdata=self.data, user=self.server.system_user,
                         timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # The same command line the server was first started with (its socket, no TCP).
        import shlex

        words = shlex.split(self.opts)[1:]
        options = [w for i, w in enumerate(words)
                   if w != "-D" and (i == 0 or words[i - 1] != "-D")]
        self._pg_ctl("-w", "-l", str(self.data / "restart.log"),
                     "-o", " ".join(shlex.quote(o) for o in options), "start")

    def close(self) -> None:
        self.server.cleanup()


def test_database_outage_mid_run(start: Callable[..., Daemon], daemon_env: dict[str, str],
                                 tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    db = PrivateServer(Path("/tmp") / f"sk-outage-{os.getpid()}")
    try:
        # A lease longer than the outage: the browser keeps running meanwhile. (An outage
        # longer than the lease means this process can no longer prove it owns the session.)
        daemon = start(DATABASE_URL=db.url, SESSIONKEEPER_SNAPSHOT_INTERVAL="30",
                       SESSIONKEEPER_LEASE_TTL="600")
        login(daemon, demo_port)
        db.stop()
        failed = daemon.wait_for("snapshot_failed", 60)
        assert failed["attempt"] >= 1
        code, body = daemon.readyz()
        assert code == 503 and body["degraded"] and body["state"] == "ready"
        assert daemon.proc.poll() is None  # the browser keeps running; no crash
        db.start()
        landed = daemon.wait_for("snapshot_committed", 90, kind="periodic")
        assert landed["changed"]
        # The commit is logged a moment before the snapshot returns and clears `degraded`.
        deadline = time.monotonic() + 10
        while daemon.readyz()[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.readyz()[0] == 200
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0
        assert "browser_crashed" not in daemon.names()
    finally:
        db.close()


def test_chromium_crash_is_survived(start: Callable[..., Daemon],
                                    daemon_env: dict[str, str]) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start()
    login(daemon, demo_port)
    # The login checkpoint relaunches Chromium: wait for the new one.
    deadline = time.monotonic() + 15
    while not (pids := browser_pids(daemon.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids, "no Chromium process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    crashed = daemon.wait_for("browser_crashed", 30)
    assert crashed["retry_in_s"] >= 1
    daemon.wait_for("browser_restarted", 60, reason="crash")
    # Relaunched from the local profile: logged in again without a QR code.
    ready_again = [e for e in daemon.events if e.get("event") == "ready"]
    deadline = time.monotonic() + 30
    while len(ready_again) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        ready_again = [e for e in daemon.events if e.get("event") == "ready"]
    assert len(ready_again) >= 2 and daemon.names().count("qr_required") == 1
    assert daemon.proc.poll() is None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0


def test_custom_target_and_unreachable_site(start: Callable[..., Daemon]) -> None:
    """`custom` drives any site by its selectors; a site that does not answer is retried."""
    import threading

    from app.demo.server import DemoSite

    port = free_port()
    ready = threading.Event()
    stop = threading.Event()
    site_holder: list[DemoSite] = []

    def serve() -> None:
        async def main() -> None:
            site = DemoSite(port=port, message_rate=0)
            site_holder.append(site)
            await site.start()
            ready.set()
            await asyncio.to_thread(stop.wait)
            await site.stop()

        asyncio.run(main())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert ready.wait(10)
    try:
        daemon = start(SESSIONKEEPER_TARGET="custom",
                       SESSIONKEEPER_TARGET_URL=f"http://127.0.0.1:{port}/",
                       SESSIONKEEPER_QR_SELECTOR="#qr img, #qr svg",
                       SESSIONKEEPER_READY_SELECTOR="#chat-list",
                       SESSIONKEEPER_LOGGED_OUT_SELECTOR="[data-testid='logged-out']")
        shown = daemon.wait_for("qr_required", 60)
        assert shown["qr_payload"] == site_holder[0].current_payload  # from an ancestor's data-ref
        assert link_demo(port)["linked"]
        daemon.wait_for("ready", 30)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(30) == 0
    finally:
        stop.set()
        server.join(10)

    down = start(SESSIONKEEPER_TARGET="custom", SESSIONKEEPER_TARGET_URL="http://127.0.0.1:9/",
                 SESSIONKEEPER_QR_SELECTOR="#qr", SESSIONKEEPER_READY_SELECTOR="#ok")
    event = down.wait_for("target_unreachable", 60)
    assert event["retry_in_s"] >= 1 and "127.0.0.1:9" in event["url"]
    assert down.proc.poll() is None and "browser_crashed" not in down.names()
    down.signal(signal.SIGTERM)
    assert down.wait_exit(30) == 0


def test_custom_target_needs_its_selectors(start: Callable[..., Daemon]) -> None:
    daemon = start(SESSIONKEEPER_TARGET="custom", SESSIONKEEPER_TARGET_URL="http://x.test/")
    assert daemon.wait_exit(30) == 2
    errors = [line for line in daemon.raw if "error" in line.lower()]
    assert len(errors) == 1 and "SESSIONKEEPER_QR_SELECTOR" in errors[0], daemon.log_text()


def test_handover_to_a_waiting_process(start: Callable[..., Daemon],
                                       daemon_env: dict[str, str], database_url: str) -> None:
    """A deploy: B starts while A owns the session; B waits; A's SIGTERM hands over."""
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    old = start()
    login(old, demo_port)
    # Each container has its own network and its own disk.
    new = start(PORT=str(free_port()),
                SESSIONKEEPER_PROFILE_DIR=daemon_env["SESSIONKEEPER_PROFILE_DIR"] + "-b")
    waiting = new.wait_for("waiting_for_lease", 60)
    assert waiting["holder"] and f"-{old.proc.pid}-" in waiting["holder"]
    assert "browser_started" not in new.names()
    # The HTTP server starts alongside the session's lease and restore (the boot's imports
    # overlap); Chromium launches only once it answers.
    new.wait_for("daemon_started", 30)
    code, body = new.readyz()
    assert code == 503 and body["state"] == "waiting_for_lease"
    # The waiting process's status page names the holder.
    [waiting_facts] = new.get_json("/api/sessions")["sessions"]
    assert waiting_facts["state"] == "waiting_for_lease" and not waiting_facts["lease_held"]
    assert waiting_facts["lease_holder"] == waiting["holder"]
    old.signal(signal.SIGTERM)
    assert old.wait_exit(30) == 0
    final = old.wait_for("shutdown_completed")
    old.wait_for("lease_released")
    restored = new.wait_for("session_restored", 30)
    assert restored["generation"] == final["generation"]
    new.wait_for("ready", 60)
    handover = new.wait_for("handover_completed", 10)
    assert 0 < handover["seconds"] < 30
    assert "qr_required" not in new.names()
    m, s = new.metrics(), (("session", SESSION),)
    assert m[("sessionkeeper_handover_duration_seconds_count", s)] == 1
    assert m[("sessionkeeper_handover_duration_seconds_sum", s)] == pytest.approx(
        handover["seconds"], abs=0.01)
    assert m[("sessionkeeper_restore_duration_seconds_count", s)] == 1
    assert m[("sessionkeeper_lease_held", s)] == 1
    # Never two browsers: B launched only after A had exited.
    started = new.wait_for("browser_started")
    assert started["_t"] > old.events[-1]["_t"]
    tokens = [e["fencing_token"] for d in (old, new) for e in d.events
              if e.get("event") == "lease_acquired"]
    assert tokens == sorted(tokens) and len(set(tokens)) == 2
    new.signal(signal.SIGTERM)
    assert new.wait_exit(30) == 0


def test_lost_lease_stops_the_browser_without_writing(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start()
    login(daemon, demo_port)
    before = generations(database_url)
    # Another owner takes the session (as after a partition that outlived the lease).
    sql(database_url, "UPDATE sessions SET owner = 'intruder', lease_token = lease_token + 1,"
         " lease_expires_at = now() + interval '1 hour' WHERE id = $1", SESSION)
    lost = daemon.wait_for("lease_lost", 15)
    assert "another process" in lost["reason"]
    daemon.wait_for("waiting_for_lease", 10, holder="intruder")
    deadline = time.monotonic() + 10
    while browser_pids(daemon.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not browser_pids(daemon.proc.pid)
    assert daemon.readyz()[1]["state"] == "waiting_for_lease"
    assert generations(database_url) == before  # nothing written after the loss
    # The intruder goes away: the session comes back here, still logged in.
    sql(database_url, "UPDATE sessions SET owner = NULL, lease_expires_at = NULL WHERE id = $1",
         SESSION)
    acquired = [e for e in daemon.events if e.get("event") == "lease_acquired"]
    deadline = time.monotonic() + 20
    while len(acquired) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        acquired = [e for e in daemon.events if e.get("event") == "lease_acquired"]
    assert len(acquired) == 2 and acquired[1]["fencing_token"] > acquired[0]["fencing_token"]
    deadline = time.monotonic() + 30
    while daemon.names().count("ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.names().count("ready") >= 2 and daemon.names().count("qr_required") == 1
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(30) == 0


def test_killed_owner_is_replaced_within_the_ttl(
        start: Callable[..., Daemon], daemon_env: dict[str, str]) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    old = start()
    login(old, demo_port)
    new = start(PORT=str(free_port()))
    new.wait_for("waiting_for_lease", 60)
    old.kill_all()
    killed = time.monotonic()
    acquired = new.wait_for("lease_acquired", 30)
    ttl = float(daemon_env["SESSIONKEEPER_LEASE_TTL"])
    # The TTL plus one poll (0.5 s), with slack for a loaded 2-core machine; a missed
    # expiry would take another TTL.
    assert acquired["_t"] - killed <= ttl + 3
    new.wait_for("ready", 60)
    assert "qr_required" not in new.names()
    new.signal(signal.SIGTERM)
    assert new.wait_exit(30) == 0


def test_several_sessions_in_one_process(start: Callable[..., Daemon],
                                         daemon_env: dict[str, str], database_url: str) -> None:
    """SESSIONKEEPER_SESSION_IDS: a Chromium, a lease and snapshots each; a crash in one
    session leaves the other alone."""
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start(SESSIONKEEPER_SESSION_IDS="alpha,beta")
    for sid in ("alpha", "beta"):
        daemon.wait_for("qr_required", 60, session_id=sid)
    # Both pages show the demo site's current code; one that rotated in between (a slow
    # machine) is approved on the next round.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
            any(e.get("event") == "login_checkpoint" and e.get("session_id") == sid
                for e in daemon.events) for sid in ("alpha", "beta")):
        with contextlib.suppress(OSError, urllib.error.HTTPError):
            link_demo(demo_port)
        time.sleep(1)
    for sid in ("alpha", "beta"):
        daemon.wait_for("login_checkpoint", 1, session_id=sid)
    code, body = daemon.readyz()
    assert code == 200 and {s["session_id"] for s in body["sessions"]} == {"alpha", "beta"}
    profile = Path(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    assert (profile / "alpha").is_dir() and (profile / "beta").is_dir()

    # The checkpoint relaunches Chromium after its log line: wait until alpha's is up again.
    daemon.wait_for("browser_restarted", 30, session_id="alpha", reason="checkpoint")
    deadline = time.monotonic() + 15
    while True:
        pids = browser_pids(daemon.proc.pid)
        table = process_table()  # read after: a pid seen there is in here unless it just exited
        alpha = [pid for pid in pids if pid in table
                 and any(str(profile / "alpha").encode() in a for a in table[pid][1])]
        if alpha or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert alpha, "alpha's Chromium not found"
    for pid in alpha:  # (the one the checkpoint closed may still be on its way out)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    daemon.wait_for("browser_restarted", 60, session_id="alpha", reason="crash")
    crashed = [e["session_id"] for e in daemon.events if e.get("event") == "browser_crashed"]
    assert crashed == ["alpha"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(60) == 0
    finals = {e["session_id"] for e in daemon.events if e.get("event") == "shutdown_completed"}
    assert finals == {"alpha", "beta"}

    async def owners() -> list[tuple[str, str | None]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT s.id, max(g.kind) FILTER (WHERE g.kind = 'login')"
                                    " FROM sessions s JOIN snapshots g ON g.session_id = s.id"
                                    " WHERE s.owner IS NULL GROUP BY s.id ORDER BY s.id")
            return [(r[0], r[1]) for r in rows]
        finally:
            await conn.close()

    # Both released, both with a login generation of their own.
    assert asyncio.run(owners()) == [("alpha", "login"), ("beta", "login")]


def _owners(url: str) -> dict[str, str | None]:
    async def go() -> dict[str, str | None]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT id, CASE WHEN lease_expires_at > now() THEN owner"
                                    " END AS owner FROM sessions WHERE registered ORDER BY id")
            return {r["id"]: r["owner"] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(go())


def test_claim_mode_three_replicas_six_sessions(start: Callable[..., Daemon],
                                                daemon_env: dict[str, str], database_url: str,
                                                tmp_path: Path) -> None:
    ids = [f"s{i}" for i in range(6)]
    for sid in ids:
        proc = subprocess.run([sys.executable, "-m", "app", "sessions", "add", sid, "--json"],
                              env={**daemon_env}, capture_output=True, text=True, check=False,
                              cwd=Path(__file__).resolve().parent.parent)
        assert proc.returncode == 0, proc.stderr
    replicas = [start(PORT=str(free_port()), SESSIONKEEPER_MAX_SESSIONS="3",
                      SESSIONKEEPER_DEMO_MESSAGE_RATE="0",
                      SESSIONKEEPER_PROFILE_DIR=str(tmp_path / f"r{i}" / "profiles"),
                      SESSIONKEEPER_DATA_DIR=str(tmp_path / f"r{i}" / "state"))
                for i in range(3)]

    def ready_sessions() -> set[str]:
        return {e["session_id"] for r in replicas for e in r.events
                if e.get("event") == "login_checkpoint" or (
                    e.get("event") == "ready" and e.get("previous") == "restoring")}

    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    deadline = time.monotonic() + 120
    while ready_sessions() != set(ids) and time.monotonic() < deadline:
        owners = _owners(database_url)
        assert len({o for o in owners.values() if o}) <= 3
        # The phone: approve whatever code the demo site shows (one site serves every page).
        with contextlib.suppress(OSError, urllib.error.HTTPError):
            link_demo(demo_port)
        time.sleep(0.5)
    if ready_sessions() != set(ids):
        Path("/tmp/claim-debug.log").write_text(
            "\n\n".join("\n".join(r.raw) for r in replicas))
    assert ready_sessions() == set(ids), "see /tmp/claim-debug.log"
    owners = _owners(database_url)
    assert all(owners.values())
    per_replica = {o: list(owners.values()).count(o) for o in set(owners.values())}
    assert all(n <= 3 for n in per_replica.values())

    # Kill the replica with the most sessions: the others take them over.
    victim = max(replicas, key=lambda r: sum(o is not None and f"-{r.proc.pid}-" in o
                                             for o in owners.values()))
    orphans = {sid for sid, o in owners.items() if o and f"-{victim.proc.pid}-" in o}
    victim.kill_all()
    killed = time.monotonic()
    survivors = [r for r in replicas if r is not victim]
    ttl = float(daemon_env["SESSIONKEEPER_LEASE_TTL"])
    taken: set[str] = set()
    while time.monotonic() - killed < ttl + 30 and taken != orphans:
        taken = {e["session_id"] for r in survivors for e in r.events
                 if e.get("event") == "session_claimed" and e.get("_t", 0) > killed}
        time.sleep(0.2)
    assert taken == orphans, [r.log_text() for r in survivors]
    claim_times = [e["_t"] - killed for r in survivors for e in r.events
                   if e.get("event") == "session_claimed" and e.get("_t", 0) > killed]
    assert max(claim_times) <= ttl + 3  # the TTL plus a claim poll, with some slack
    print("unowned after the kill, s:", sorted(round(t, 2) for t in claim_times))
    owners = _owners(database_url)
    assert all(owners.values()), owners
    assert not any(f"-{victim.proc.pid}-" in o for o in owners.values() if o), owners
    # `sessions remove`: the owner takes a final snapshot and hands the session back.
    proc = subprocess.run([sys.executable, "-m", "app", "sessions", "remove", "s0"],
                          env={**daemon_env}, capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    removed = next(r for r in survivors if any(e.get("session_id") == "s0" for e in r.events))
    removed.wait_for("session_removed", ttl + 5, session_id="s0")
    removed.wait_for("lease_released", 10, session_id="s0")
    for replica in survivors:
        replica.signal(signal.SIGTERM)
    for replica in survivors:
        assert replica.wait_exit(60) == 0
    # Handed back after their final snapshots.
    assert not any(_owners(database_url).values())


def test_two_daemons_at_once_only_one_runs_the_browser(
        start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str) -> None:
    first = start()
    second = start(PORT=str(free_port()))
    holders: set[str] = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        running = [d for d in (first, second) if browser_pids(d.proc.pid)]
        assert len(running) <= 1, "two browsers on one session"
        owner = sql(database_url, "SELECT owner FROM sessions WHERE id = $1", SESSION)
        if owner:
            holders.add(owner)
        time.sleep(0.1)
    assert len(holders) == 1  # one owner all along
    waiting = [d for d in (first, second) if "waiting_for_lease" in d.names()]
    assert len(waiting) == 1 and "browser_started" not in waiting[0].names()
    for daemon in (first, second):
        daemon.signal(signal.SIGTERM)
    for daemon in (first, second):
        assert daemon.wait_exit(60) == 0


def test_twenty_rolling_deploys(tmp_path: Path, pg_server_url: str) -> None:
    """scripts/bench-handover as a test: 20 cycles of start B, SIGTERM A (own database)."""
    out = tmp_path / "handover"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env["DATABASE_URL"] = pg_server_url
    # Its profiles go to a temporary folder (tens of MB): gone when it is done. A short path:
    # Chromium puts its singleton socket under TMPDIR, and socket paths are short.
    tmp = Path(tempfile.mkdtemp(prefix="sk-hb-", dir="/tmp"))
    env["TMPDIR"] = str(tmp)
    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run([sys.executable, "scripts/bench_handover.py", "--cycles", "20",
                               "--out", str(out)], env=env, cwd=root, capture_output=True,
                              text=True, timeout=900, check=False)
        left = list(tmp.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert left == []
    result = json.loads((out / "results.json").read_text())
    assert result["cycles"] == 20
    assert result["qr_shown"] == 0 and result["generations_lost"] == 0
    assert result["samples_with_two_browsers"] == 0
    assert all(r["restored_generation"] == r["final_generation"] for r in result["rows"])
