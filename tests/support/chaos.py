"""Fault injection against the real daemon (scripts/chaos, tests/test_chaos.py).

Every scenario runs `python -m app run` on the demo target (a real Chromium writing chat
messages) against a PostgreSQL cluster of its own (tests/support/pgcluster.py), so the database
can be stopped, black-holed (tests/support/pgproxy.py) and corrupted without touching anyone
else's. The daemon is judged by what it logs (its JSON events), what it answers (/readyz), the
processes it runs and what the database holds afterwards.

  a  kill -9 at random points of a snapshot (staging, upload, commit), then a new boot
  b  PostgreSQL stopped for a while mid-run
  c  PostgreSQL black-holed (connections hang, not refused)
  d  a chunk's bytes flipped in the database
  e  Chromium killed, then its renderer hung (SIGSTOP)
  f  disk full during restore (a small tmpfs)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from app.store.schema import DEFAULT_SCHEMA, server_settings
from tests.support.daemon import (
    ROOT,
    Daemon,
    descendants,
    free_port,
    process_table,
)
from tests.support.pgcluster import PgCluster
from tests.support.pgproxy import PgProxy

SESSION = "chaos"
STAGING_PREFIX = "staging-"
RESTORE_TROUBLE = ("restore_generation_corrupt", "restore_failed")
# Events a daemon could log when it finds its page or browser wedged (none is known today
# besides browser_crashed; the others are names a fix might choose).
HANG_EVENTS = ("browser_crashed", "browser_unresponsive", "page_unresponsive", "browser_hung",
               "page_hung", "watch_timeout")


# ---------------------------------------------------------------------------- results


@dataclass
class ScenarioResult:
    """What one scenario found: pass/fail, its figures, and why it failed."""

    key: str
    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passed(self) -> bool | None:
        """None when skipped."""
        return None if self.skipped else not self.failures

    def fail(self, why: str) -> None:
        self.failures.append(why)

    def check(self, ok: bool, why: str) -> bool:
        if not ok:
            self.fail(why)
        return ok

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


# ---------------------------------------------------------------------------- plumbing


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def sql(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one query (its own connection)."""
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=10,
                                     server_settings=server_settings(DEFAULT_SCHEMA))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    rows: list[asyncpg.Record] = _run(go())
    return rows


def generations(url: str, session: str = SESSION) -> list[dict[str, Any]]:
    """The session's committed generations, oldest first."""
    try:
        rows = sql(url, "SELECT generation, kind, login_state FROM snapshots "
                        "WHERE session_id = $1 ORDER BY generation", session)
    except asyncpg.UndefinedTableError:
        return []
    return [dict(r) for r in rows]


def newest_logged_in(gens: list[dict[str, Any]]) -> int | None:
    """The generation a boot restores: the newest logged-in (or unlabelled) one."""
    logged_in = [g["generation"] for g in gens if g["login_state"] in (None, "ready")]
    return max(logged_in) if logged_in else None


def db_now(url: str) -> Any:
    return sql(url, "SELECT now() AS t")[0]["t"]


def chunks_since(url: str, since: Any, session: str = SESSION) -> int:
    return int(sql(url, "SELECT count(*) AS n FROM chunks WHERE session_id = $1 "
                        "AND created_at > $2", session, since)[0]["n"])


def lease_row(url: str, session: str = SESSION) -> dict[str, Any] | None:
    rows = sql(url, "SELECT owner, lease_token, lease_expires_at, "
                    "lease_expires_at < now() AS expired FROM sessions WHERE id = $1", session)
    return dict(rows[0]) if rows else None


def find_event(daemon: Daemon, name: str | tuple[str, ...], after: float = 0.0,
               **fields: Any) -> dict[str, Any] | None:
    """The first event called name (or one of names) logged at or after `after`."""
    names = (name,) if isinstance(name, str) else name
    for event in list(daemon.events):
        if (event.get("event") in names and event["_t"] >= after
                and all(event.get(k) == v for k, v in fields.items())):
            return event
    return None


def wait_event(daemon: Daemon, name: str | tuple[str, ...], after: float = 0.0,
               timeout: float = 60.0, stop_on: tuple[str, ...] = (),
               **fields: Any) -> dict[str, Any] | None:
    """Wait for find_event; None on timeout, when the daemon exits, or when one of stop_on
    is logged first."""
    deadline = time.monotonic() + timeout
    while True:
        found = find_event(daemon, name, after, **fields)
        if found is not None:
            return found
        if stop_on and find_event(daemon, stop_on, after) is not None:
            return None
        if daemon.proc.poll() is not None:
            time.sleep(0.2)  # the reader may still hold the last lines
            return find_event(daemon, name, after, **fields)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def chromium_processes(root: int) -> dict[int, bytes]:
    """Every Chromium process below root, with its command line joined by spaces (the
    zygote's children rewrite theirs into one string, so their arguments are not split)."""
    table = process_table()
    found = {}
    for pid in descendants(root):
        if pid in table:
            cmd = b" ".join(table[pid][1])
            if b"chrom" in cmd.split(b" ", 1)[0] and b"crashpad" not in cmd.split(b" ", 1)[0]:
                found[pid] = cmd
    return found


def chromium_main(root: int) -> list[int]:
    """Chromium's browser process(es) below root (every helper has a --type=)."""
    return [pid for pid, cmd in chromium_processes(root).items() if b" --type=" not in cmd]


def renderer_pids(root: int) -> list[int]:
    """Chromium's renderer processes below root."""
    return [pid for pid, cmd in chromium_processes(root).items()
            if b" --type=renderer" in cmd]


def work_dir_for(profile: Path) -> Path:
    """Where the daemon stages its captures (app.snapshot.staging.work_dir_for)."""
    return profile.parent / f".{profile.name}.sessionkeeper"


def staging_of(profile: Path, pid: int) -> list[str]:
    """Staging folders of process pid beside profile."""
    try:
        return [e.name for e in os.scandir(work_dir_for(profile))
                if e.name.startswith(f"{STAGING_PREFIX}{pid}-")]
    except FileNotFoundError:
        return []


def watch_staging(profile: Path, daemon: Daemon, timeout: float) -> float | None:
    """The moment a capture of this daemon starts (its staging folder appears): the daemon
    logs no event when a snapshot begins, so the folder is the signal. None on timeout."""
    deadline = time.monotonic() + timeout
    pid = daemon.proc.pid
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        if staging_of(profile, pid):
            return time.monotonic()
        time.sleep(0.001)
    return None


def tree_digest(root: Path) -> str:
    """SHA-256 over every file's path, size and bytes below root."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- the bench


class Chaos:
    """What the scenarios share: the cluster, a work folder, the daemons started (all killed
    at the end), and every shutdown seen (SIGTERM to exit)."""

    def __init__(self, cluster: PgCluster, work: Path,
                 say: Callable[[str], None] | None = None) -> None:
        self.cluster = cluster
        self.work = work
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.daemons: list[Daemon] = []
        self.shutdowns: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def env(self, url: str, profile: Path, demo_port: int, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SESSIONKEEPER_") and k not in ("PORT", "DATABASE_URL")}
        env.update(
            DATABASE_URL=url, PORT=str(free_port()), SESSIONKEEPER_TARGET="demo",
            SESSIONKEEPER_DEMO_PORT=str(demo_port), SESSIONKEEPER_DEMO_MESSAGE_RATE="600",
            SESSIONKEEPER_SESSION_ID=SESSION, SESSIONKEEPER_PROFILE_DIR=str(profile),
            SESSIONKEEPER_DATA_DIR=str(profile.parent / "state"),
            SESSIONKEEPER_LOG_FORMAT="json", SESSIONKEEPER_LEASE_TTL="6",
        )
        for key, value in overrides.items():  # SNAPSHOT_INTERVAL=... is SESSIONKEEPER_...
            env[key if key in ("PORT", "DATABASE_URL") else f"SESSIONKEEPER_{key}"] = value
        return env

    def start(self, env: dict[str, str]) -> Daemon:
        daemon = Daemon(env)
        with self._lock:
            self.daemons.append(daemon)
        return daemon

    def stop(self, daemon: Daemon, scenario: str, timeout: float = 60) -> tuple[int | None, float]:
        """SIGTERM and wait for the exit; (exit code or None if it had to be killed, seconds).
        Every one is recorded as a shutdown seen."""
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        try:
            code: int | None = daemon.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            daemon.kill_all()
        seconds = time.monotonic() - started
        daemon.kill_all()  # whatever it left (it should have left nothing)
        completed = find_event(daemon, "shutdown_completed")
        with self._lock:
            self.shutdowns.append({"scenario": scenario, "seconds": round(seconds, 3),
                                   "exit_code": code,
                                   "logged_ms": completed["duration_ms"] if completed else None})
        return code, seconds

    def cli(self, url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`python -m app ARGS` against url."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
        env.update(DATABASE_URL=url, SESSIONKEEPER_LOG_FORMAT="json",
                   SESSIONKEEPER_DATA_DIR=str(self.work / "cli-state"))
        return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def verify_generations(self, url: str, label: str) -> tuple[int, list[str]]:
        """Restore every kept generation into a temporary folder with the CLI; (how many
        restored, what failed)."""
        listed = self.cli(url, "snapshots", SESSION, "--json")
        if listed.returncode != 0:
            return 0, [f"snapshots: {listed.stderr.strip()[-300:]}"]
        gens = [g["generation"] for g in json.loads(listed.stdout)["generations"]]
        ok, bad = 0, []
        for gen in gens:
            target = self.work / "verify" / f"{label}-g{gen}" / "profile"
            out = self.cli(url, "restore", SESSION, "--profile", str(target),
                           "--generation", str(gen), "--json")
            if out.returncode == 0:
                ok += 1
            elif gen in [g["generation"] for g in generations(url)]:
                bad.append(f"generation {gen}: {out.stderr.strip()[-300:]}")
            # else: pruned by the running daemon since it was listed
            shutil.rmtree(target.parent, ignore_errors=True)
        if not gens:
            bad.append("no generation at all")
        return ok, bad

    def cleanup(self) -> None:
        """Kill every daemon still running."""
        for daemon in self.daemons:
            if daemon.proc.poll() is None or descendants(daemon.proc.pid):
                with contextlib.suppress(Exception):
                    daemon.kill_all()


def _boot_ready(daemon: Daemon, timeout: float) -> tuple[dict[str, Any] | None, bool]:
    """(the `ready` event or None, whether a QR code was asked for first)."""
    ready = wait_event(daemon, "ready", timeout=timeout, stop_on=("qr_required", "logged_out"))
    qr = find_event(daemon, ("qr_required", "logged_out")) is not None
    return ready, qr


def _login(chaos: Chaos, daemon: Daemon, result: ScenarioResult, timeout: float = 120) -> bool:
    """A first boot with SESSIONKEEPER_DEMO_LINK_AFTER: the QR approved, the login checkpoint."""
    if wait_event(daemon, "login_checkpoint", timeout=timeout) is None:
        result.fail("the first login never reached its checkpoint:\n" + daemon.log_text())
        return False
    return True


def _since(event: dict[str, Any] | None, t0: float) -> float | None:
    return round(event["_t"] - t0, 3) if event else None


# ---------------------------------------------------------------------------- a: kill -9


@dataclass
class KillRecord:
    n: int
    lane: int
    kind: str  # periodic (a live capture) or shutdown (the final snapshot after SIGTERM)
    phase: str  # staging, upload, commit, after, none
    delay_ms: int
    window_ms: int
    in_place: bool  # restarted on the same disk (else a fresh container)
    generation_before: int | None
    generation_after: int | None
    expected: int | None
    restored: int | None
    kept_local: int | None  # the profile on disk was kept (local_profile_kept), generation
    ready: bool
    qr: bool
    ready_s: float | None
    trouble: list[str]
    ok: bool


def classify(committed: bool, new_chunks: int, staging_left: bool, seen: bool) -> str:
    """Which part of the snapshot the kill hit, from what it left behind."""
    if committed:
        return "commit" if staging_left else "after"
    if new_chunks:
        return "upload"
    if staging_left:
        return "staging"
    return "none" if not seen else "staging"


def scenario_kills(chaos: Chaos, kills: int = 100, lanes: int = 2, verify_every: int = 10,
                   interval: float = 30, ttl: float = 5, shutdown_timeout: float = 6,
                   kinds: tuple[str, ...] = ("periodic", "shutdown"),
                   seed: int | None = None) -> ScenarioResult:
    """kills x kill -9 at a random moment of a snapshot, each followed by a boot that must
    reach ready without a QR code; every kept generation restored with the CLI every
    verify_every kills and at the end."""
    result = ScenarioResult("a", f"{kills} x kill -9 during a snapshot")
    seed = seed if seed is not None else random.randrange(1 << 30)
    result.figures.update(kills_asked=kills, lanes=lanes, seed=seed, interval_s=interval,
                          lease_ttl_s=ttl, kinds=list(kinds))
    lock = threading.Lock()
    taken = [0]
    records: list[KillRecord] = []
    verified = {"runs": 0, "generations": 0, "failures": 0}

    def take() -> int | None:
        with lock:
            if taken[0] >= kills:
                return None
            taken[0] += 1
            return taken[0]

    def give_back() -> None:
        with lock:
            taken[0] -= 1

    def lane_main(lane: int) -> None:
        try:
            _kill_lane(chaos, lane, result, take, give_back, records, verified, lock,
                       random.Random(seed + lane), verify_every, interval, ttl,
                       shutdown_timeout, kinds)
        except Exception:
            with lock:
                result.fail(f"lane {lane} broke: {traceback.format_exc()[-1500:]}")

    threads = [threading.Thread(target=lane_main, args=(i,), name=f"chaos-lane-{i}")
               for i in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records.sort(key=lambda r: r.n)
    done = len(records)
    reached = sum(r.ready and not r.qr for r in records)
    phases: dict[str, int] = {}
    for r in records:
        phases[r.phase] = phases.get(r.phase, 0) + 1
    ready_times = [r.ready_s for r in records if r.ready_s is not None]
    result.figures.update(
        kills=done, restores_reached_ready=reached,
        qr_after_kill=sum(r.qr for r in records),
        phases=phases, by_kind={k: sum(r.kind == k for r in records) for k in kinds},
        in_place=sum(r.in_place for r in records),
        boot_to_ready_s={"median": round(statistics.median(ready_times), 2),
                         "max": round(max(ready_times), 2)} if ready_times else None,
        cli_verify=verified,
        records=[asdict(r) for r in records],
    )
    result.check(done == kills, f"{done} kills done of {kills}")
    result.check(reached == done, f"{done - reached} boots after a kill did not reach ready "
                                  "without a QR code: " + ", ".join(
                                      f"#{r.n} ({r.kind}, {r.phase}: {r.trouble})"
                                      for r in records if not r.ok)[:1500])
    for r in records:
        if r.ok is False and r.ready and not r.qr:
            result.fail(f"kill #{r.n}: {r.trouble}")
    return result


def _kill_lane(chaos: Chaos, lane: int, result: ScenarioResult, take: Callable[[], int | None],
               give_back: Callable[[], None], records: list[KillRecord],
               verified: dict[str, int], lock: threading.Lock, rng: random.Random,
               verify_every: int, interval: float, ttl: float, shutdown_timeout: float,
               kinds: tuple[str, ...]) -> None:
    url = chaos.cluster.create_database(f"chaos_kills_{lane}")
    demo_port = free_port()
    root = chaos.work / f"kills-{lane}"
    # Many messages a minute: each snapshot has something to upload.
    common = {"SNAPSHOT_INTERVAL": str(interval), "LEASE_TTL": str(ttl),
              "SHUTDOWN_TIMEOUT": str(shutdown_timeout), "DEMO_MESSAGE_RATE": "1200"}
    containers = [0]

    def container(fresh: bool) -> Path:
        if fresh:
            old = root / f"c{containers[0]}"
            containers[0] += 1
            shutil.rmtree(old, ignore_errors=True)  # the old container's disk is gone
        return root / f"c{containers[0]}" / "profile"

    def boot(profile: Path, **extra: str) -> Daemon:
        return chaos.start(chaos.env(url, profile, demo_port, **common, **extra))

    def note(line: str) -> None:
        chaos.say(f"[a lane {lane}] {line}")

    # First boot: log in; let one periodic snapshot and one shutdown snapshot complete to
    # learn how long each lasts (the window the kills are spread over).
    profile = container(True)
    daemon = boot(profile, DEMO_LINK_AFTER="1")
    if not _login(chaos, daemon, result):
        return
    window: dict[str, float] = {}
    seen = watch_staging(profile, daemon, interval + 60)
    done = wait_event(daemon, "snapshot_committed", after=seen or 0, timeout=60,
                      kind="periodic")
    window["periodic"] = (done["_t"] - seen) if (seen and done) else 0.3
    time.sleep(rng.uniform(0.5, 2))
    sigterm = time.monotonic()
    daemon.signal(signal.SIGTERM)
    seen = watch_staging(profile, daemon, 30)
    code = daemon.wait_exit(60)
    with lock:
        chaos.shutdowns.append({"scenario": "a", "seconds": round(time.monotonic() - sigterm, 3),
                                "exit_code": code, "logged_ms": None})
    done = find_event(daemon, "snapshot_committed", kind="shutdown")
    window["shutdown"] = (done["_t"] - seen) if (seen and done) else 0.4
    daemon.kill_all()
    note(f"snapshot windows: periodic {window['periodic']:.3f} s, "
         f"shutdown {window['shutdown']:.3f} s")
    daemon = boot(profile)
    ready, qr = _boot_ready(daemon, 120)
    if ready is None or qr:
        result.fail(f"lane {lane}: the boot after a clean stop did not reach ready:\n"
                    + daemon.log_text())
        return

    while (n := take()) is not None:
        kind = kinds[n % len(kinds)]
        before = generations(url)
        since = db_now(url)
        if kind == "periodic":
            seen = watch_staging(profile, daemon, interval + 60)
        else:
            time.sleep(rng.uniform(0.2, 2.0))
            daemon.signal(signal.SIGTERM)
            seen = watch_staging(profile, daemon, 30)
        span = window[kind]
        delay = rng.uniform(0, span)
        if seen is not None:
            time.sleep(max(0.0, seen + delay - time.monotonic()))
        pid = daemon.proc.pid
        daemon.kill_all()
        if daemon.proc.returncode == 0:
            # It finished its shutdown before the kill: no kill happened; try that one again.
            note(f"#{n}: the shutdown finished before the kill ({delay * 1000:.0f} ms)")
            give_back()
            window[kind] *= 0.8
            daemon = boot(profile)
            ready, qr = _boot_ready(daemon, ttl + shutdown_timeout + 120)
            if ready is None or qr:
                result.fail(f"lane {lane}: no ready after a clean stop:\n" + daemon.log_text())
                return
            continue
        # The window follows the snapshots' length: a kill that came after the commit
        # shortens it, one that came before lengthens it (about a quarter land after).
        window[kind] *= 1.05
        staging_left = bool(staging_of(profile, pid))
        after = generations(url)
        new_chunks = chunks_since(url, since)
        gen_before = max((g["generation"] for g in before), default=None)
        gen_after = max((g["generation"] for g in after), default=None)
        phase = classify(gen_after != gen_before, new_chunks, staging_left, seen is not None)
        if phase == "after":
            window[kind] *= 0.85 / 1.05
        expected = newest_logged_in(after)
        in_place = (n // 2) % 2 == 1
        profile = container(not in_place)
        booted = time.monotonic()
        daemon = boot(profile)
        ready, qr = _boot_ready(daemon, ttl + shutdown_timeout + 120)
        restored = find_event(daemon, "session_restored")
        kept = find_event(daemon, "local_profile_kept")
        trouble = [str(e["event"]) for e in daemon.events if e.get("event") in RESTORE_TROUBLE]
        if restored is None and kept is None and find_event(daemon, "session_new") is not None:
            trouble.append("session_new: the database's generations were not restored")
        if restored is not None and restored.get("generation") != expected:
            trouble.append(f"restored generation {restored.get('generation')}, "
                           f"newest logged-in is {expected}")
        if kept is not None and expected is not None and kept.get("generation", 0) < expected:
            trouble.append(f"kept the profile on disk (generation {kept.get('generation')}) "
                           f"over the newer generation {expected}")
        if seen is None:
            trouble.append("no snapshot started within the wait")
        if ready is None and not qr:
            trouble.append("no ready within the wait")
        record = KillRecord(
            n=n, lane=lane, kind=kind, phase=phase, delay_ms=int(delay * 1000),
            window_ms=int(span * 1000), in_place=in_place,
            generation_before=gen_before, generation_after=gen_after, expected=expected,
            restored=restored.get("generation") if restored else None,
            kept_local=kept.get("generation") if kept else None,
            ready=ready is not None, qr=qr,
            ready_s=round(ready["_t"] - booted, 2) if ready else None, trouble=trouble,
            ok=ready is not None and not qr and not trouble)
        with lock:
            records.append(record)
        note(f"#{n} {kind} kill {record.delay_ms}/{record.window_ms} ms -> {phase}; "
             f"generation {gen_before}->{gen_after}; boot "
             + (f"ready in {record.ready_s} s (restored {record.restored}, kept "
                f"{record.kept_local})" if record.ready
                else "NOT ready") + (" QR!" if qr else "") + (f" {trouble}" if trouble else ""))
        if not record.ok and (ready is None or qr):
            note(daemon.log_text())
            daemon.kill_all()
            daemon = boot(profile, DEMO_LINK_AFTER="1")  # log in again to go on
            if wait_event(daemon, "ready", timeout=120) is None:
                result.fail(f"lane {lane}: could not log in again after a failed boot")
                return
        if n % verify_every == 0:
            _verify(chaos, url, f"a{lane}-{n}", result, verified, lock)
    chaos.stop(daemon, "a")
    _verify(chaos, url, f"a{lane}-end", result, verified, lock)
    shutil.rmtree(root, ignore_errors=True)


def _verify(chaos: Chaos, url: str, label: str, result: ScenarioResult,
            verified: dict[str, int], lock: threading.Lock) -> None:
    ok, bad = chaos.verify_generations(url, label)
    with lock:
        verified["runs"] += 1
        verified["generations"] += ok
        verified["failures"] += len(bad)
        for line in bad:
            result.fail(f"CLI restore ({label}): {line}")
    chaos.say(f"[a] {label}: {ok} kept generations restored with the CLI"
              + (f", {len(bad)} failed: {bad}" if bad else ""))


# ---------------------------------------------------------------------------- b: outage


# A chat message of the demo page: the newest one (want null), or the one numbered `want`.
# Numbers alone do not tell messages apart: a page restored from an older generation numbers
# its next messages from there again, so the write time comes along.
MESSAGE_JS = """async (want) => {
  const db = await openDb(CHAT_DB);
  const store = db.transaction(CHAT_STORE).objectStore(CHAT_STORE);
  return await new Promise((resolve, reject) => {
    const req = store.openCursor(null, "prev");
    req.onsuccess = () => {
      const c = req.result;
      if (!c || (want !== null && c.value.n < want)) return resolve(null);
      if (want === null || c.value.n === want) return resolve({n: c.value.n, at: c.value.at});
      c.continue();
    };
    req.onerror = () => reject(req.error);
  });
}"""


class PageProbe:
    """Reads the demo page inside the daemon's own Chromium through its /cdp endpoint (the
    newest chat message the page has stored), reconnecting as Chromium comes and goes."""

    def __init__(self, port: int, demo_url: str) -> None:
        from playwright.sync_api import sync_playwright

        self.endpoint = f"http://127.0.0.1:{port}/cdp/{SESSION}"
        self.demo_url = demo_url
        self._pw_cm = sync_playwright()
        self.pw = self._pw_cm.__enter__()
        self.browser: Any = None

    def newest(self) -> dict[str, Any] | None:
        """The newest message the page stored ({n, at}), or None when it cannot be read."""
        try:
            if self.browser is None or not self.browser.is_connected():
                self.browser = self.pw.chromium.connect_over_cdp(self.endpoint, timeout=3000)
            for context in self.browser.contexts:
                for page in context.pages:
                    if page.url.startswith(self.demo_url):
                        found: dict[str, Any] | None = page.evaluate(MESSAGE_JS, None)
                        return found
        except Exception:
            self.browser = None
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.browser is not None:
                self.browser.close()
        with contextlib.suppress(Exception):
            self._pw_cm.__exit__(None, None, None)


def generation_message(chaos: Chaos, url: str, generation: int, demo_port: int,
                       number: int, label: str) -> tuple[dict[str, Any] | None, dict[str, Any],
                                                         dict[str, Any] | None]:
    """A generation restored into a temporary folder and opened in Chromium (the demo site
    served again on its origin's port): (message `number` in it, demoInspect(), its newest
    message)."""
    from tests.support.inspect_profile import demo_page

    target = chaos.work / "inspect" / label / "profile"
    out = chaos.cli(url, "restore", SESSION, "--profile", str(target), "--generation",
                    str(generation), "--json")
    if out.returncode != 0:
        raise RuntimeError(f"restore of generation {generation}: {out.stderr.strip()[-300:]}")

    async def read() -> tuple[Any, Any, Any]:
        async with demo_page(target, demo_port) as (_, page):
            await page.wait_for_function(
                "['ready', 'qr'].includes(document.body.dataset.state)", timeout=15000)
            return (await page.evaluate(MESSAGE_JS, number),
                    await page.evaluate("window.demoInspect()"),
                    await page.evaluate(MESSAGE_JS, None))

    try:
        found: tuple[Any, Any, Any] = _run(read())
        return found
    finally:
        shutil.rmtree(target.parent, ignore_errors=True)


def scenario_outage(chaos: Chaos, outage_s: float = 60, ttl: float = 30,
                    interval: float = 30) -> ScenarioResult:
    """PostgreSQL stopped for outage_s mid-run: the daemon stays up, and once the database is
    back a snapshot lands that holds every message the page stored meanwhile."""
    result = ScenarioResult("b", f"PostgreSQL stopped for {outage_s:g} s mid-run")
    result.figures.update(outage_s=outage_s, lease_ttl_s=ttl, interval_s=interval)
    url = chaos.cluster.create_database("chaos_outage")
    demo_port = free_port()
    profile = chaos.work / "outage" / "profile"
    daemon = chaos.start(chaos.env(url, profile, demo_port, DEMO_LINK_AFTER="1",
                                   LEASE_TTL=str(ttl), SNAPSHOT_INTERVAL=str(interval),
                                   CDP="true", CDP_BIND="127.0.0.1"))
    probe: PageProbe | None = None
    try:
        if not _login(chaos, daemon, result):
            return result
        if wait_event(daemon, "snapshot_committed", timeout=interval + 60,
                      kind="periodic") is None:
            result.fail("no periodic snapshot before the outage:\n" + daemon.log_text())
            return result
        probe = PageProbe(daemon.port, f"http://127.0.0.1:{demo_port}/")
        before = probe.newest()
        down = time.monotonic()
        chaos.cluster.stop()
        chaos.say(f"[b] PostgreSQL stopped (page at message {before}); "
                  f"back in {outage_s:g} s")
        # The newest message the page is known to have stored (it stops with the browser
        # when the lease is lost; its profile on disk holds it from then on).
        seen: dict[str, Any] | None = before
        crashed_during = False
        while True:
            value = probe.newest()
            if value is not None and (seen is None or value["n"] >= seen["n"]):
                seen = value
            if time.monotonic() - down >= outage_s:
                break
            if daemon.proc.poll() is not None:
                crashed_during = True
                break
            time.sleep(1)
        chaos.cluster.start()
        back = time.monotonic()
        chaos.say(f"[b] PostgreSQL back; the page had stored up to message {seen}")
        result.check(not crashed_during and daemon.proc.poll() is None,
                     "the daemon exited during the outage:\n" + daemon.log_text())
        lost = find_event(daemon, "lease_lost", after=down)
        committed = wait_event(daemon, "snapshot_committed", after=back,
                               timeout=max(240, interval * 4))
        deadline = time.monotonic() + 240
        cleared: float | None = None
        while time.monotonic() < deadline and daemon.proc.poll() is None:
            with contextlib.suppress(Exception):
                code, body = daemon.readyz()
                if code == 200 and not body.get("degraded"):
                    cleared = time.monotonic()
                    break
            time.sleep(0.2)
        reacquired = find_event(daemon, "lease_acquired", after=down)
        failures = [e for e in daemon.events if e["_t"] >= down and e.get("event") in (
            "snapshot_failed", "database_unavailable", "lease_renewal_failed")]
        result.figures.update(
            daemon_stayed_up=daemon.proc.poll() is None,
            lease_lost=lost is not None, lease_lost_after_s=_since(lost, down),
            lease_reacquired_after_back_s=_since(reacquired, back),
            recovery_to_snapshot_s=_since(committed, back),
            recovery_to_ready_not_degraded_s=round(cleared - back, 3) if cleared else None,
            retries_logged=len(failures),
            browser_crashed=find_event(daemon, "browser_crashed", after=down) is not None,
            page_message_before=before["n"] if before else None,
            page_message_at_return=seen["n"] if seen else None,
        )
        result.check(committed is not None, "no snapshot committed after the database "
                                            "came back:\n" + daemon.log_text())
        result.check(cleared is not None, "/readyz never said ready and not degraded after "
                                          "the database came back")
        result.check(find_event(daemon, "browser_crashed", after=down) is None,
                     "browser_crashed during the outage")
        code, _ = chaos.stop(daemon, "b")
        result.check(code == 0, f"exit code {code} after SIGTERM")
        if probe is not None:
            probe.close()
            probe = None
        if committed is not None and seen is not None:
            copy, info, newest = generation_message(chaos, url, committed["generation"],
                                                    demo_port, seen["n"], "outage")
            kept = "same" if copy == seen else ("missing" if copy is None else "another")
            result.figures.update(first_generation_after_return=committed["generation"],
                                  its_last_message=newest["n"] if newest else None,
                                  its_copy_of_that_message=kept)
            result.check(info["hasCreds"], "the generation after the outage has no login")
            result.check(kept == "same",
                         f"messages lost: the page had stored message #{seen['n']} (written at "
                         f"{seen['at']}) before the database came back; the first generation "
                         f"after it ({committed['generation']}) holds "
                         + (f"another #{seen['n']} (written at {copy['at']}): the page was "
                            "rolled back and numbered on" if copy else "no such message"))
        return result
    finally:
        if probe is not None:
            probe.close()
        if not chaos.cluster.running:
            chaos.cluster.start()
        daemon.kill_all()


# ---------------------------------------------------------------------------- c: black hole


def _browser_gone_at(daemon: Daemon, since: float, timeout: float,
                     also: Callable[[], None] | None = None) -> float | None:
    deadline = since + timeout
    while time.monotonic() < deadline:
        if also is not None:
            also()
        if not chromium_processes(daemon.proc.pid):
            return time.monotonic()
        time.sleep(0.1)
    return None


def scenario_blackhole(chaos: Chaos, ttl: float = 10, standby: bool = True) -> ScenarioResult:
    """PostgreSQL black-holed (connections hang): the browser stops within the lease TTL, and
    comes back once the network heals. With standby, a second replica waits for the lease
    meanwhile: two browsers on one session must never run at once."""
    result = ScenarioResult("c", "PostgreSQL black-holed (connections hang)")
    result.figures.update(lease_ttl_s=ttl)
    url = chaos.cluster.create_database("chaos_blackhole")
    proxy = PgProxy.for_url(url)
    demo_port = free_port()
    profile = chaos.work / "blackhole" / "a" / "profile"
    env = chaos.env(proxy.url_for(url), profile, demo_port, DEMO_LINK_AFTER="1",
                    LEASE_TTL=str(ttl), SNAPSHOT_INTERVAL="30")
    daemon = chaos.start(env)
    try:
        if not _login(chaos, daemon, result):
            return result
        if wait_event(daemon, "browser_restarted", timeout=30, reason="checkpoint") is None:
            result.fail("no relaunch after the login checkpoint")
            return result
        time.sleep(ttl / 2)  # a renewal or two
        holed = time.monotonic()
        proxy.blackhole()
        chaos.say(f"[c] black hole on (lease TTL {ttl:g} s)")
        expired_at: list[float] = []

        def db_side() -> None:
            if not expired_at:
                row = lease_row(url)
                if row and row["expired"]:
                    expired_at.append(time.monotonic())

        gone = _browser_gone_at(daemon, holed, max(3 * ttl, ttl + 30), db_side)
        lost = wait_event(daemon, "lease_lost", after=holed, timeout=2 if gone else 0.1)
        deadline = holed + ttl + 5
        while not expired_at and time.monotonic() < deadline:  # when the next owner could
            db_side()                                          # take over
            time.sleep(0.1)
        alive_after_expiry = None
        if expired_at:
            alive_after_expiry = round(((gone or time.monotonic()) - expired_at[0]), 3)
        result.figures.update(
            browser_stopped_after_s=round(gone - holed, 3) if gone else None,
            lease_lost_after_s=_since(lost, holed),
            lease_expired_in_db_after_s=round(expired_at[0] - holed, 3) if expired_at else None,
            browser_ran_past_db_expiry_s=max(0.0, alive_after_expiry)
            if alive_after_expiry is not None else None,
            stopped_before_db_expiry_s=round(expired_at[0] - gone, 3)
            if (gone and expired_at) else None,
            hung_connections=proxy.hung,
        )
        result.check(gone is not None and gone - holed <= ttl,
                     "the browser did not stop within the lease TTL "
                     f"({ttl:g} s): " + (f"it stopped after {gone - holed:.1f} s" if gone
                                         else f"still running after {max(3 * ttl, ttl + 30):g} s"))
        result.check(lost is not None, "no lease_lost while the database was black-holed")
        healed = time.monotonic()
        reset = proxy.heal()
        chaos.say(f"[c] black hole lifted ({reset} connections reset)")
        reacquired = wait_event(daemon, "lease_acquired", after=healed, timeout=120)
        ready = wait_event(daemon, "ready", after=healed, timeout=120)
        if lost is None:
            lost_late = find_event(daemon, "lease_lost", after=holed)
            result.figures["lease_lost_after_heal_s"] = _since(lost_late, healed)
        result.figures.update(
            recovery_lease_s=_since(reacquired, healed), recovery_ready_s=_since(ready, healed),
            daemon_stayed_up=daemon.proc.poll() is None)
        result.check(ready is not None, "not ready again after the black hole was lifted")
        result.check(daemon.proc.poll() is None, "the daemon exited")
        if standby and ready is not None:
            _standby_phase(chaos, result, daemon, proxy, url, demo_port, ttl)
        if daemon.proc.poll() is None:
            code, _ = chaos.stop(daemon, "c")
            result.check(code == 0, f"exit code {code} after SIGTERM")
        return result
    finally:
        proxy.close()
        daemon.kill_all()


def _standby_phase(chaos: Chaos, result: ScenarioResult, daemon: Daemon, proxy: PgProxy,
                   url: str, demo_port: int, ttl: float) -> None:
    """A second replica (straight to PostgreSQL) waits for the lease; the first is
    black-holed. Its browser must be gone before the second one's starts."""
    profile = chaos.work / "blackhole" / "b" / "profile"
    other = chaos.start(chaos.env(url, profile, demo_port, LEASE_TTL=str(ttl),
                                  SNAPSHOT_INTERVAL="30"))
    try:
        if wait_event(other, "waiting_for_lease", timeout=60) is None:
            result.fail("standby: the second replica never waited for the lease:\n"
                        + other.log_text())
            return
        holed = time.monotonic()
        proxy.blackhole()
        overlap = 0.0
        last = time.monotonic()
        deadline = holed + max(3 * ttl, ttl + 30)
        taken_over: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            both = bool(chromium_main(daemon.proc.pid)) and bool(chromium_main(other.proc.pid))
            if both:
                overlap += now - last
            last = now
            if taken_over is None and find_event(other, "ready") is not None:
                taken_over = now
            if (taken_over is not None and now - taken_over > 1
                    and not chromium_processes(daemon.proc.pid)):
                break
            time.sleep(0.05)
        ready = find_event(other, "ready")
        result.figures.update(standby_ready_after_s=_since(ready, holed),
                              two_browsers_s=round(overlap, 2))
        result.check(ready is not None, "standby: the second replica never became ready")
        result.check(overlap == 0, f"standby: two browsers ran the session at once for "
                                   f"{overlap:.1f} s")
        proxy.heal()
        code, _ = chaos.stop(other, "c")
        result.check(code == 0, f"standby: exit code {code} after SIGTERM")
    finally:
        other.kill_all()


# ---------------------------------------------------------------------------- d: bit flip


def _manifest_refs(url: str) -> dict[int, set[bytes]]:
    """Every generation's chunks (file chunks only, not list objects)."""
    from app.vault.manifests import load_manifest

    async def go() -> dict[int, set[bytes]]:
        conn = await asyncpg.connect(url, server_settings=server_settings(DEFAULT_SCHEMA))
        try:
            gens = [r["generation"] for r in await conn.fetch(
                "SELECT generation FROM snapshots WHERE session_id = $1", SESSION)]
            return {g: (await load_manifest(conn, SESSION, g)).manifest.digests()
                    for g in gens}
        finally:
            await conn.close()

    refs: dict[int, set[bytes]] = _run(go())
    return refs


def flip_chunk(url: str, digest: bytes) -> None:
    """Flip bytes in the middle of a stored chunk."""
    data = bytearray(sql(url, "SELECT data FROM chunks WHERE session_id = $1 AND digest = $2",
                         SESSION, digest)[0]["data"])
    middle = len(data) // 2
    for i in range(middle, min(len(data), middle + 8)):
        data[i] ^= 0xFF
    sql(url, "UPDATE chunks SET data = $3 WHERE session_id = $1 AND digest = $2",
        SESSION, digest, bytes(data))


def scenario_bitflip(chaos: Chaos) -> ScenarioResult:
    """A chunk of the newest generation damaged in the database: the boot detects it, logs it,
    falls back to the generation before and reaches ready. Then a chunk every generation
    shares: no generation restores, which is logged, and the daemon stays up."""
    result = ScenarioResult("d", "a chunk's bytes flipped in the database")
    url = chaos.cluster.create_database("chaos_bitflip")
    demo_port = free_port()
    root = chaos.work / "bitflip"
    daemon = chaos.start(chaos.env(url, root / "c0" / "profile", demo_port,
                                   DEMO_LINK_AFTER="1"))
    try:
        if not _login(chaos, daemon, result):
            return result
        time.sleep(3)  # messages, so the final snapshot differs from the login's
        chaos.stop(daemon, "d")
        gens = generations(url)
        refs = _manifest_refs(url)
        newest = newest_logged_in(gens)
        older = [g["generation"] for g in gens
                 if g["generation"] != newest and g["login_state"] in (None, "ready")]
        if newest is None or not older:
            result.fail(f"need two logged-in generations, have {gens}")
            return result
        previous = max(older)
        only_newest = sorted(refs[newest] - set().union(*(refs[g] for g in refs if g != newest)))
        if not only_newest:
            result.fail("no chunk belongs to the newest generation alone")
            return result
        victim = only_newest[len(only_newest) // 2]
        flip_chunk(url, victim)
        chaos.say(f"[d] flipped chunk {victim.hex()[:12]} of generation {newest}")
        daemon = chaos.start(chaos.env(url, root / "c1" / "profile", demo_port))
        ready, qr = _boot_ready(daemon, 120)
        corrupt = find_event(daemon, "restore_generation_corrupt")
        restored = find_event(daemon, "session_restored")
        result.figures.update(
            damaged_generation=newest,
            fell_back_to=restored.get("generation") if restored else None,
            logged=[e["event"] for e in daemon.events if e.get("event") in (
                *RESTORE_TROUBLE, "restore_completed", "restore_fallback")],
            reached_ready=ready is not None and not qr,
            damaged_generation_kept=newest in [g["generation"] for g in generations(url)])
        result.check(corrupt is not None and corrupt.get("generation") == newest,
                     "the damaged generation was not reported (restore_generation_corrupt)")
        result.check(restored is not None and restored.get("generation") == previous,
                     f"restored {restored.get('generation') if restored else None}, "
                     f"expected the fallback to generation {previous}")
        result.check(ready is not None and not qr, "no ready after the fallback:\n"
                     + daemon.log_text())
        chaos.stop(daemon, "d")
        # A chunk every generation needs: nothing restores.
        refs = _manifest_refs(url)
        shared = sorted(set.intersection(*refs.values()) - {victim})
        if not shared:
            result.figures["all_damaged"] = "no chunk shared by every generation; skipped"
            return result
        flip_chunk(url, shared[0])
        daemon = chaos.start(chaos.env(url, root / "c2" / "profile", demo_port))
        shown = wait_event(daemon, ("qr_required", "ready"), timeout=120)
        failed = find_event(daemon, "restore_failed")
        result.figures["all_damaged"] = {
            "restore_failed_logged": failed is not None,
            "corrupt_events": sum(e.get("event") == "restore_generation_corrupt"
                                  for e in daemon.events),
            "daemon_up": daemon.proc.poll() is None,
            "then": shown["event"] if shown else None}
        result.check(failed is not None, "every generation damaged: no restore_failed logged")
        result.check(daemon.proc.poll() is None, "every generation damaged: the daemon exited")
        code, _ = chaos.stop(daemon, "d")
        result.check(code == 0, f"exit code {code} after SIGTERM")
        return result
    finally:
        daemon.kill_all()


# ---------------------------------------------------------------------------- e: browser


@contextlib.contextmanager
def _stopped(pids: list[int]) -> Iterator[list[int]]:
    """SIGSTOP the processes; on the way out SIGCONT those still there (ours to wake)."""
    stopped = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
    try:
        yield stopped
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        # Woken, a renderer whose browser is gone exits; one that does not is killed (it is
        # no longer below the daemon, so the daemon's clean-up would miss it).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in stopped):
            time.sleep(0.1)
        for pid in stopped:
            with contextlib.suppress(OSError):
                if b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


def scenario_browser(chaos: Chaos, hang_wait: float = 60) -> ScenarioResult:
    """Chromium's main process killed, then its renderers stopped (a hung page): each is
    detected and Chromium relaunched, logged in from the local profile."""
    result = ScenarioResult("e", "Chromium killed, then its renderer hung")
    url = chaos.cluster.create_database("chaos_browser")
    demo_port = free_port()
    daemon = chaos.start(chaos.env(url, chaos.work / "browser" / "profile", demo_port,
                                   DEMO_LINK_AFTER="1", SHUTDOWN_TIMEOUT="15"))
    try:
        if not _login(chaos, daemon, result):
            return result
        if wait_event(daemon, "browser_restarted", timeout=30, reason="checkpoint") is None:
            result.fail("no relaunch after the login checkpoint")
            return result
        wait_event(daemon, "ready", after=find_event(daemon, "browser_restarted")["_t"],
                   timeout=30)
        pids = chromium_main(daemon.proc.pid)
        if len(pids) != 1:
            result.fail(f"not one Chromium browser process below the daemon: {pids}")
            return result
        # e1: the main process killed.
        killed = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        crashed = wait_event(daemon, "browser_crashed", after=killed, timeout=30)
        relaunched = wait_event(daemon, "browser_restarted", after=killed, timeout=60,
                                reason="crash")
        ready = wait_event(daemon, "ready", after=killed, timeout=60)
        result.figures["killed"] = {"detected_s": _since(crashed, killed),
                                    "relaunched_s": _since(relaunched, killed),
                                    "ready_s": _since(ready, killed)}
        result.check(crashed is not None, "kill -9 of Chromium: no browser_crashed")
        result.check(relaunched is not None, "kill -9 of Chromium: no relaunch")
        result.check(ready is not None, "kill -9 of Chromium: not ready again")
        if ready is None:
            return result
        # e2: the renderers stopped (the page hangs; the browser process is fine).
        time.sleep(2)
        renderers = renderer_pids(daemon.proc.pid)
        if not renderers:
            result.fail("no renderer process found")
            return result
        hung = time.monotonic()
        with _stopped(renderers) as stopped:
            chaos.say(f"[e] {len(stopped)} renderer(s) stopped")
            detected = wait_event(daemon, HANG_EVENTS, after=hung, timeout=min(10, hang_wait))
            readyz = None
            with contextlib.suppress(Exception):
                readyz = daemon.readyz()  # what an operator sees while the page hangs
            if detected is None:
                detected = wait_event(daemon, HANG_EVENTS, after=hung,
                                      timeout=hang_wait - (time.monotonic() - hung))
            result.figures["hung"] = {"renderers": len(stopped),
                                      "detected_s": _since(detected, hung),
                                      "detected_as": detected["event"] if detected else None,
                                      "readyz_while_hung": readyz[1].get("state")
                                      if readyz else None}
            if detected is None:
                result.fail(f"hung renderer: nothing detected within {hang_wait:g} s "
                            f"(/readyz said {readyz})")
                # The shutdown path with the page still hung (issue 12, item 10).
                code, seconds = chaos.stop(daemon, "e (renderer hung)", timeout=60)
                result.figures["hung"]["shutdown_while_hung_s"] = round(seconds, 2)
                result.figures["hung"]["shutdown_exit_code"] = code
                result.check(code == 0, f"SIGTERM with the renderer hung: exit code {code} "
                                        f"after {seconds:.1f} s")
                return result
        relaunched = wait_event(daemon, "browser_restarted", after=hung, timeout=60)
        ready = wait_event(daemon, "ready", after=hung, timeout=60)
        result.figures["hung"].update(relaunched_s=_since(relaunched, hung),
                                      ready_s=_since(ready, hung))
        result.check(relaunched is not None, "hung renderer: no relaunch")
        result.check(ready is not None, "hung renderer: not ready again")
        result.check(find_event(daemon, "qr_required", after=killed) is None,
                     "a QR code after a relaunch")
        code, _ = chaos.stop(daemon, "e")
        result.check(code == 0, f"exit code {code} after SIGTERM")
        return result
    finally:
        daemon.kill_all()


# ---------------------------------------------------------------------------- f: disk full


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs at path; the reason it cannot be, or None."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return f"mount -t tmpfs failed: {out.stderr.strip()}"
    return None


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


def scenario_disk_full(chaos: Chaos, size: str = "5m") -> ScenarioResult:
    """The profile folder on a small tmpfs and a generation bigger than it: the restore fails
    with a clear error and the profile that was there stays as it was."""
    from tests.support.profile_tree import build_profile

    result = ScenarioResult("f", "disk full during restore")
    mount = chaos.work / "diskfull" / "mnt"
    why = _mount_tmpfs(mount, size)
    if why is not None:
        result.skipped = why
        return result
    daemon: Daemon | None = None
    try:
        url = chaos.cluster.create_database("chaos_diskfull")
        big = build_profile(chaos.work / "diskfull" / "big" / "profile",
                            idb_bytes=8 * 1024 * 1024)
        made = chaos.cli(url, "snapshot", SESSION, "--profile", str(big.root), "--json")
        if made.returncode != 0:
            result.fail(f"snapshot of the big profile: {made.stderr[-300:]}")
            return result
        raw = json.loads(made.stdout)["bytes_raw"]
        previous = build_profile(mount / "profile", idb_bytes=256 * 1024).root
        before = tree_digest(previous)
        used_before = shutil.disk_usage(mount).used
        result.figures.update(tmpfs=size, generation_bytes=raw,
                              previous_profile_bytes=used_before)
        # The daemon's boot restore.
        daemon = chaos.start(chaos.env(url, previous, free_port(),
                                       DATA_DIR=str(chaos.work / "diskfull" / "state")))
        deadline = time.monotonic() + 90
        error: dict[str, Any] | None = None
        while time.monotonic() < deadline and daemon.proc.poll() is None:
            error = next((e for e in daemon.events if e.get("level") in ("error", "critical")
                          and "space" in json.dumps(e).lower()), None)
            if error is not None:
                break
            time.sleep(0.2)
        time.sleep(1)
        lines = [line for line in daemon.raw if "space" in line.lower()]
        exited = daemon.proc.poll()
        result.figures["daemon"] = {
            "exit_code": exited, "error_event": error.get("event") if error else None,
            "error_reason": str(error.get("reason"))[:300] if error else None,
            "error_line": (lines[0][:300] if lines else None),
            "traceback": any("Traceback" in line for line in daemon.raw)}
        daemon.kill_all()
        lease = lease_row(url)
        result.figures["daemon"]["lease_left_held"] = bool(
            lease and lease["owner"] and not lease["expired"])
        after = tree_digest(previous)
        leftovers = [p.name for p in mount.iterdir() if p.name.startswith(".profile.restore-")]
        result.check(bool(lines), "the daemon's output never names the full disk:\n"
                     + daemon.log_text())
        result.check(not any("Traceback" in line for line in daemon.raw),
                     "the daemon printed a traceback:\n" + daemon.log_text())
        result.check(after == before, "the daemon changed the previous profile")
        result.check(not leftovers, f"half-written restores left on the disk: {leftovers}")
        # The CLI's restore.
        out = chaos.cli(url, "restore", SESSION, "--profile", str(previous))
        stderr = [line for line in out.stderr.splitlines() if line.strip()]
        plain = [line for line in stderr if not line.startswith("{")]
        result.figures["cli"] = {"exit_code": out.returncode,
                                 "message": plain[-1][:300] if plain else None}
        result.check(out.returncode == 1, f"CLI restore exit code {out.returncode}")
        result.check(len(plain) == 1 and "space" in plain[0].lower(),
                     f"CLI restore: not one clear line about the disk: {stderr[-5:]}")
        result.check(tree_digest(previous) == before, "the CLI changed the previous profile")
        result.check(shutil.disk_usage(mount).used <= used_before + 64 * 1024,
                     "the failed restores left data on the disk")
        return result
    finally:
        if daemon is not None:
            daemon.kill_all()
        _umount(mount)


# ---------------------------------------------------------------------------- all of it

SCENARIOS = ("a", "b", "c", "d", "e", "f")


def longest_shutdown(chaos: Chaos) -> dict[str, Any] | None:
    return max(chaos.shutdowns, key=lambda s: s["seconds"]) if chaos.shutdowns else None


def run_scenario(chaos: Chaos, key: str, **options: Any) -> ScenarioResult:
    """One scenario by its letter; an unexpected error is a failure, never a crash."""
    runners: dict[str, Callable[..., ScenarioResult]] = {
        "a": scenario_kills, "b": scenario_outage, "c": scenario_blackhole,
        "d": scenario_bitflip, "e": scenario_browser, "f": scenario_disk_full}
    started = time.monotonic()
    try:
        result = runners[key](chaos, **options)
    except Exception:
        result = ScenarioResult(key, f"scenario {key}")
        result.fail("the scenario broke: " + traceback.format_exc()[-2000:])
    finally:
        chaos.cleanup()
        if not chaos.cluster.running:
            chaos.cluster.start()
    result.figures["duration_s"] = round(time.monotonic() - started, 1)
    return result
