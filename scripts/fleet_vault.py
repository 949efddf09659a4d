"""scripts/bench-fleet vault: the vault alone, no browsers, many sessions written at once.

--sessions profile-shaped trees (tests/support/profile_tree.py: real LevelDB through plyvel)
are shared among --processes worker processes, each calling the vault in-process
(app.vault.save.save_snapshot on a pool of its own, a lease held per session as the daemon
does). Simulated time: every --snapshot-minutes each session's IndexedDB takes the demo page's
messages of that span (--rate a minute of --message-bytes, each with the key-generator update
IndexedDB writes; the database stays open between snapshots, as Chromium keeps it, so its log
grows and LevelDB flushes and compacts on its own) and is snapshotted. --hours of that.

Three phases, each measured apart on the server (WAL position, pg_stat_wal, commits, the
server's CPU when it is ours): load (every tree's first snapshot), steady (the simulated
hours), leases (--lease-renewals renewals of every session's lease). Then one garbage-collection
pass over every session and the tables' sizes. Prune (with its garbage collection) runs after
each commit inside save_snapshot: its time is taken by wrapping the two functions in the
workers (a measuring hook of this bench; the vault's code is unchanged).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import random
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import asyncpg  # noqa: E402

from app.log import configure_logging  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store import leases  # noqa: E402
from app.store.db import open_pool  # noqa: E402
from app.store.schema import DEFAULT_SCHEMA, server_settings  # noqa: E402
from app.vault import retention  # noqa: E402
from app.vault import save as save_module  # noqa: E402
from app.vault.options import VaultOptions  # noqa: E402
from app.vault.retention import collect_garbage  # noqa: E402
from scripts.bench_vault import admin, with_db  # noqa: E402
from scripts.fleet_procs import tree_cpu_seconds  # noqa: E402
from tests.support.profile_tree import ProfileTree, build_profile, payload  # noqa: E402

MiB = 1024 * 1024
PHASES = ("loaded", "steady", "leases")
# Leases are taken once and never run out during the run (renewals are measured apart).
LEASE_TTL_S = 30 * 24 * 3600.0
# IndexedDB bumps its object store's key generator with every add: a fixed key that sorts
# before the records, so each flushed table overlaps the last and LevelDB compacts.
KEY_GENERATOR = b"\x00\x00\x00\x00key-generator"
# One steady snapshot: duration_ms (the vault's own), wall ms (prune included), prune ms,
# GC ms, client CPU ms, bytes uploaded, new chunks, committed (0/1), bytes kept (bytes_raw).
SAMPLE_FIELDS = ("duration_ms", "wall_ms", "prune_ms", "gc_ms", "cpu_ms", "bytes_uploaded",
                 "chunks_new", "committed", "bytes_raw")


@dataclass(frozen=True)
class VaultPlan:
    """What the vault part simulates."""

    sessions: int = 1000
    processes: int = 8
    hours: float = 24.0
    snapshot_minutes: float = 5.0
    rate: float = 30.0
    message_bytes: int = 600
    profile_mb: float = 6.0
    keep: int = 5
    lease_renewals: int = 10

    @property
    def ticks(self) -> int:
        """Snapshots per session in the simulated hours."""
        return max(1, round(self.hours * 60 / self.snapshot_minutes))

    @property
    def messages_per_tick(self) -> int:
        """Messages a session's page writes between two snapshots."""
        return round(self.rate * self.snapshot_minutes)


def assign(ids: list[str], processes: int) -> list[list[str]]:
    """The sessions of each worker: dealt round-robin, so worker sizes differ by one at most."""
    return [ids[i::processes] for i in range(processes) if ids[i::processes]]


def build_template(root: Path, profile_mb: float, seed: int) -> None:
    """A profile of about profile_mb on disk: LevelDB records (the bulk; LevelDB's own
    compression takes about a quarter off) and stored blobs, as scripts/bench_vault.py does."""
    total = int(profile_mb * MiB)
    blob_count = max(4, int(profile_mb) // 5)
    build_profile(root, idb_bytes=total * 62 // 100, blob_count=blob_count,
                  blob_size=total * 30 // 100 // blob_count, seed=seed)


class Chat:
    """One session's IndexedDB, open for the whole run, written like the demo page."""

    def __init__(self, tree: ProfileTree, message_bytes: int) -> None:
        self.db = tree.idb()
        self.rng = random.Random(str(tree.root))
        self.message_bytes = message_bytes
        self.written = 0

    def write(self, count: int) -> None:
        """count messages, one transaction each (the page writes one every two seconds)."""
        for _ in range(count):
            self.written += 1
            with self.db.write_batch() as batch:
                batch.put(b"msg-%09d" % self.written, payload(self.rng, self.message_bytes))
                batch.put(KEY_GENERATOR, b"%d" % self.written)

    def close(self) -> None:
        self.db.close()


class Timers:
    """Milliseconds spent in prune and in garbage collection since the last reset."""

    def __init__(self) -> None:
        self.prune_ms = 0.0
        self.gc_ms = 0.0

    def install(self) -> None:
        """Wrap the vault's prune (called by save_snapshot after a commit) and its garbage
        collection (called by prune) in this process."""
        save_module.prune = self._timed(save_module.prune, "prune_ms")  # type: ignore[assignment]
        retention.collect_garbage = self._timed(retention.collect_garbage, "gc_ms")  # type: ignore[assignment]

    def _timed(self, fn: Callable[..., Awaitable[Any]], field: str) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return await fn(*args, **kwargs)
            finally:
                setattr(self, field, getattr(self, field) + (time.monotonic() - started) * 1000)
        return timed


@dataclass
class Worker:
    """One writer process: its sessions and the bench's channels to it."""

    index: int
    ids: list[str]
    url: str
    plan: VaultPlan
    work: Path
    reports: Any  # multiprocessing queue: (phase, index, payload)
    gates: dict[str, Any]  # phase -> multiprocessing event: carry on past it
    progress: Any  # multiprocessing array: snapshots done, per worker

    def run(self) -> None:
        anyio.run(self._run)

    async def _reached(self, phase: str, data: Any = None) -> None:
        self.reports.put((phase, self.index, data))
        await anyio.to_thread.run_sync(self.gates[phase].wait)

    async def _run(self) -> None:
        # The vault's warnings and errors on stderr; its info lines (a snapshot_committed per
        # snapshot) would cost the writers time.
        configure_logging("warning", "console", stream=sys.stderr)
        timers = Timers()
        timers.install()
        settings = Settings(database_url=self.url, data_dir=self.work / "state",  # type: ignore[arg-type]
                            keep_generations=self.plan.keep)
        options = VaultOptions.from_settings(settings)
        owner = leases.owner_id()
        template = self.work / f"template-{self.index}"
        build_template(template, self.plan.profile_mb, seed=self.index + 1)
        chats: dict[str, Chat] = {}
        tokens: dict[str, int] = {}
        first: list[list[float]] = []
        steady: list[list[float]] = []
        chat_cpu_s = 0.0
        async with open_pool(settings, migrate=False, max_size=2) as pool:

            async def snapshot(sid: str) -> list[float]:
                timers.prune_ms = timers.gc_ms = 0.0
                cpu, started = time.process_time(), time.monotonic()
                result = await save_module.save_snapshot(
                    pool, sid, self.work / "profiles" / sid, options, kind="periodic",
                    login_state="ready", lease_token=tokens[sid])
                return [result.duration_ms, (time.monotonic() - started) * 1000,
                        timers.prune_ms, timers.gc_ms, (time.process_time() - cpu) * 1000,
                        result.bytes_uploaded, result.chunks_new, int(result.changed),
                        result.bytes_raw]

            for sid in self.ids:
                root = self.work / "profiles" / sid
                shutil.copytree(template, root, symlinks=True)
                chats[sid] = Chat(ProfileTree(root), self.plan.message_bytes)
                async with pool.acquire() as conn:
                    token = await leases.try_acquire(conn, sid, owner, LEASE_TTL_S)
                assert token is not None, f"lease of {sid} not taken"
                tokens[sid] = token
                first.append(await snapshot(sid))
                self.progress[self.index] += 1
            shutil.rmtree(template)
            await self._reached("loaded")
            for _tick in range(self.plan.ticks):
                for sid in self.ids:
                    cpu = time.process_time()
                    chats[sid].write(self.plan.messages_per_tick)
                    chat_cpu_s += time.process_time() - cpu
                    steady.append(await snapshot(sid))
                    self.progress[self.index] += 1
            for chat in chats.values():
                chat.close()
            await self._reached("steady")
            renewals: list[float] = []
            for _round in range(self.plan.lease_renewals):
                for sid in self.ids:
                    started = time.monotonic()
                    async with pool.acquire() as conn:
                        renewed = await leases.renew(conn, sid, owner, tokens[sid], LEASE_TTL_S)
                    renewals.append((time.monotonic() - started) * 1000)
                    assert renewed, f"lease of {sid} lost"
            await self._reached("leases")
        one = self.work / "profiles" / self.ids[0]
        profile_bytes = sum(p.stat().st_size for p in one.rglob("*")
                            if p.is_file() and not p.is_symlink())
        out = self.work / f"worker-{self.index}.json"
        out.write_text(json.dumps({"first": first, "steady": steady, "renewals": renewals,
                                   "chat_cpu_s": chat_cpu_s,
                                   "one_profile_bytes_at_end": profile_bytes}))
        self.reports.put(("done", self.index, str(out)))


def run_worker(worker: Worker) -> None:
    """A worker process's entry point."""
    worker.run()


# ------------------------------------------------------------------ the server's counters


async def counters(url: str, postmaster: int | None) -> dict[str, float | None]:
    """Where the server stands: WAL position and statistics, commits of our database, and its
    processes' CPU time (None unless the server is this bench's own)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint AS wal,
                      (SELECT xact_commit FROM pg_stat_database
                        WHERE datname = current_database()) AS commits,
                      current_setting('server_version_num')::int AS version""")
        assert row is not None
        out: dict[str, float | None] = {"t": time.monotonic(), "wal": row["wal"],
                                        "commits": row["commits"]}
        if row["version"] >= 140000:
            stat = await conn.fetchrow("SELECT wal_records, wal_fpi FROM pg_stat_wal")
            assert stat is not None
            out.update(wal_records=stat["wal_records"], wal_fpi=stat["wal_fpi"])
    finally:
        await conn.close()
    out["server_cpu_s"] = tree_cpu_seconds(postmaster) if postmaster else None
    return out


def delta(marks: dict[str, dict[str, float | None]], start: str, end: str,
          key: str) -> float | None:
    """A counter's change between two marks; None where it was not read."""
    a, b = marks[start].get(key), marks[end].get(key)
    return None if a is None or b is None else float(b - a)


async def gc_pass(url: str, ids: list[str], work: Path) -> dict[str, Any]:
    """One garbage collection of every session, one after the other, timed."""
    settings = Settings(database_url=url, data_dir=work / "state")  # type: ignore[arg-type]
    deleted = deferred = 0
    started = time.monotonic()
    async with open_pool(settings, migrate=False, max_size=1) as pool:
        for sid in ids:
            async with pool.acquire() as conn:
                got = await collect_garbage(conn, sid)
            deferred += got is None
            deleted += got or 0
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 2), "ms_per_session": round(seconds * 1000 / len(ids), 1),
            "chunks_deleted": deleted, "deferred": deferred}


async def table_sizes(url: str) -> dict[str, Any]:
    """Bytes of the vault's tables (heap, TOAST, indexes), their rows, live chunk bytes."""
    conn = await asyncpg.connect(url, server_settings=server_settings(DEFAULT_SCHEMA))
    try:
        rows = await conn.fetch(
            """SELECT c.relname AS name, pg_total_relation_size(c.oid) AS total,
                      pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes,
                      s.n_live_tup AS live_rows, s.n_dead_tup AS dead_rows,
                      s.autovacuum_count AS autovacuums
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_stat_user_tables s ON s.relid = c.oid
                WHERE n.nspname = $1 AND c.relname IN ('chunks', 'snapshots', 'sessions')""",
            DEFAULT_SCHEMA)
        tables = {r["name"]: {"total": r["total"], "heap": r["heap"], "indexes": r["indexes"],
                              "toast": r["total"] - r["heap"] - r["indexes"],
                              "live_rows": r["live_rows"], "dead_rows": r["dead_rows"],
                              "autovacuums": r["autovacuums"]} for r in rows}
        live = await conn.fetchrow("SELECT count(*) AS n, coalesce(sum(stored_size), 0) AS "
                                   "stored FROM chunks")
        generations = await conn.fetchval("SELECT count(*) FROM snapshots")
        database = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
    assert live is not None
    return {"tables": tables, "chunks": live["n"], "chunk_bytes_stored": live["stored"],
            "generations_kept": generations, "database_bytes": database}


async def migrate_database(url: str, work: Path) -> None:
    settings = Settings(database_url=url, data_dir=work / "state")  # type: ignore[arg-type]
    async with open_pool(settings, max_size=1):
        pass


# ------------------------------------------------------------------ the run


def pct(values: list[float], q: int) -> float | None:
    """The q-th percentile (inclusive method); None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[q - 1])


def spread(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and the largest of some milliseconds."""
    return {"p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "max": max(values) if values else None}


def summarize(plan: VaultPlan, marks: dict[str, dict[str, float | None]],
              workers: list[dict[str, Any]], exclusive: bool) -> dict[str, Any]:
    """The vault part's figures from the phase marks and the workers' samples."""
    def column(rows: list[list[float]], field: str) -> list[float]:
        i = SAMPLE_FIELDS.index(field)
        return [r[i] for r in rows]

    first = [r for w in workers for r in w["first"]]
    steady = [r for w in workers for r in w["steady"]]
    renewals = [ms for w in workers for ms in w["renewals"]]
    # Each session's last snapshot: what a profile holds after the simulated hours.
    last_round = [r for w in workers for r in w["steady"][-len(w["first"]):]]
    steady_s = delta(marks, "loaded", "steady", "t") or 0.0
    lease_s = delta(marks, "steady", "leases", "t") or 0.0
    wall = column(steady, "wall_ms")
    committed = int(sum(column(first, "committed")) + sum(column(steady, "committed")))
    steady_wal = delta(marks, "loaded", "steady", "wal") or 0.0

    def per(value: float | None, count: float) -> float | None:
        return None if value is None or not count else value / count

    return {
        "plan": {**asdict(plan), "ticks": plan.ticks, "messages_per_tick": plan.messages_per_tick},
        "exclusive_server": exclusive,
        "real_s": {"load": round(delta(marks, "start", "loaded", "t") or 0.0, 1),
                   "steady": round(steady_s, 1), "leases": round(lease_s, 1)},
        "generations_committed": committed,
        "generations_expected": plan.sessions * (plan.ticks + 1),
        "first": {"count": len(first), "duration_ms": spread(column(first, "duration_ms")),
                  "bytes_uploaded_p50": pct(column(first, "bytes_uploaded"), 50),
                  "bytes_raw_p50": pct(column(first, "bytes_raw"), 50),
                  "wal_bytes_per_session": per(delta(marks, "start", "loaded", "wal"),
                                               plan.sessions)},
        "steady": {
            "count": len(steady),
            "duration_ms": spread(column(steady, "duration_ms")),
            "wall_ms": spread(wall),
            "prune_ms": spread(column(steady, "prune_ms")),
            "gc_ms": spread(column(steady, "gc_ms")),
            "prune_share": round(sum(column(steady, "prune_ms")) / max(sum(wall), 1e-9), 3),
            "gc_share": round(sum(column(steady, "gc_ms")) / max(sum(wall), 1e-9), 3),
            "client_cpu_ms_p50": pct(column(steady, "cpu_ms"), 50),
            "client_cpu_ms_mean": statistics.fmean(column(steady, "cpu_ms")) if steady else None,
            "bytes_uploaded_p50": pct(column(steady, "bytes_uploaded"), 50),
            "bytes_uploaded_mean": (statistics.fmean(column(steady, "bytes_uploaded"))
                                    if steady else None),
            "chunks_new_mean": statistics.fmean(column(steady, "chunks_new")) if steady else None,
            "bytes_raw_at_end_p50": pct(column(last_round, "bytes_raw"), 50),
            "snapshots_per_s": round(len(steady) / steady_s, 2) if steady_s else None,
            "wal_bytes": steady_wal,
            "wal_bytes_per_sim_hour": steady_wal / plan.hours,
            "wal_bytes_per_session_sim_hour": steady_wal / plan.hours / plan.sessions,
            "wal_bytes_per_real_hour": steady_wal / steady_s * 3600 if steady_s else None,
            "wal_bytes_per_snapshot": per(steady_wal, len(steady)),
            "wal_fpi_per_snapshot": per(delta(marks, "loaded", "steady", "wal_fpi"),
                                        len(steady)),
            "wal_records_per_snapshot": per(delta(marks, "loaded", "steady", "wal_records"),
                                            len(steady)),
            "commits_per_snapshot": per(delta(marks, "loaded", "steady", "commits"),
                                        len(steady)),
            "server_cpu_ms_per_snapshot": per(
                (delta(marks, "loaded", "steady", "server_cpu_s") or 0) * 1000
                if exclusive and marks["steady"].get("server_cpu_s") is not None else None,
                len(steady)),
            "chat_cpu_s": round(sum(w["chat_cpu_s"] for w in workers), 1),
        },
        "leases": {
            "renewals": len(renewals), "ms": spread(renewals),
            "per_s": round(len(renewals) / lease_s, 1) if lease_s else None,
            "wal_bytes_per_renewal": per(delta(marks, "steady", "leases", "wal"), len(renewals)),
            "server_cpu_ms_per_renewal": per(
                (delta(marks, "steady", "leases", "server_cpu_s") or 0) * 1000
                if exclusive and marks["leases"].get("server_cpu_s") is not None else None,
                len(renewals)),
        },
        "profile_bytes_at_end": statistics.median(w["one_profile_bytes_at_end"]
                                                  for w in workers),
    }


def wait_for(phase: str, expected: int, reports: Any, procs: list[Any], progress: Any,
             total: int, every: float) -> list[Any]:
    """The workers' reports of a phase (their payloads), printing progress meanwhile; one
    clear line when a worker dies."""
    got: list[Any] = []
    started = last = time.monotonic()
    done_before = sum(progress[:])
    while len(got) < expected:
        try:
            name, _index, data = reports.get(timeout=1)
            assert name == phase, f"{name} reported while waiting for {phase}"
            got.append(data)
        except queue.Empty:
            pass
        for i, proc in enumerate(procs):
            if proc.exitcode not in (None, 0):
                for other in procs:
                    other.kill()
                raise SystemExit(f"bench-fleet vault: worker {i} exited with code "
                                 f"{proc.exitcode} during {phase} (its traceback is above)")
        if time.monotonic() - last >= every and total:
            last = time.monotonic()
            done = sum(progress[:])
            rate = (done - done_before) / (last - started)
            left = (total - done) / rate if rate else float("inf")
            print(f"vault {phase}: {done:,}/{total:,} snapshots ({done / total:.0%}), "
                  f"{rate:.1f}/s, about {left / 60:.0f} min left", file=sys.stderr, flush=True)
    return got


def run_vault(args: Any, server: str, postmaster: int | None, work: Path) -> dict[str, Any]:
    """The vault part; its figures (see the module's docstring)."""
    plan = VaultPlan(sessions=args.vault_sessions, processes=args.processes, hours=args.hours,
                     snapshot_minutes=args.snapshot_minutes, rate=args.rate,
                     message_bytes=args.message_bytes, profile_mb=args.profile_mb,
                     keep=args.keep, lease_renewals=args.lease_renewals)
    ids = [f"vault-{i:05d}" for i in range(plan.sessions)]
    groups = assign(ids, plan.processes)
    name = f"sk_fleet_vault_{uuid.uuid4().hex[:8]}"
    folder = work / f"vault-{uuid.uuid4().hex[:6]}"
    (folder / "profiles").mkdir(parents=True)
    asyncio.run(admin(server, f'CREATE DATABASE "{name}"'))
    url = with_db(server, name)
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    gates = {phase: ctx.Event() for phase in PHASES}
    progress = ctx.Array("q", len(groups))
    procs = []
    try:
        asyncio.run(migrate_database(url, folder))
        procs = [ctx.Process(target=run_worker, daemon=True, args=(
                    Worker(i, group, url, plan, folder, reports, gates, progress),))
                 for i, group in enumerate(groups)]
        marks = {"start": asyncio.run(counters(url, postmaster))}
        for proc in procs:
            proc.start()
        totals = {"loaded": plan.sessions, "steady": plan.sessions * (plan.ticks + 1),
                  "leases": 0}
        for phase in PHASES:
            wait_for(phase, len(procs), reports, procs, progress, totals[phase],
                     args.progress_every)
            marks[phase] = asyncio.run(counters(url, postmaster))
            took = delta(marks, "start", phase, "t") or 0.0
            print(f"vault: {phase} after {took:.0f} s", file=sys.stderr, flush=True)
            gates[phase].set()
        paths = wait_for("done", len(procs), reports, procs, progress, 0, args.progress_every)
        for proc in procs:
            proc.join(60)
        workers = [json.loads(Path(p).read_text()) for p in paths]
        result = summarize(plan, marks, workers, exclusive=postmaster is not None)
        result["gc_pass"] = asyncio.run(gc_pass(url, ids, folder))
        result["sizes"] = asyncio.run(table_sizes(url))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
        asyncio.run(admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return result
