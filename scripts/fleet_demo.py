"""scripts/bench-fleet demo: many demo sessions in one daemon process (SESSIONKEEPER_SESSION_IDS),
each chatting, measured over a window.

One `sessionkeeper run` on the demo target keeps --sessions sessions (one Chromium and one
Playwright driver each); the demo site's phone approves every QR code (DEMO_LINK_AFTER) and
the page writes --rate messages a minute. Once every session has taken its login checkpoint
and --settle seconds passed, the process tree is sampled every --every seconds for --minutes:
memory (RSS, PSS) by kind of process, CPU time by kind, and the database's connections, WAL
and commits. Periodic snapshot start times (each `snapshot_committed` line's arrival less its
duration) show how the snapshots spread over the interval.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import shutil
import signal
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from scripts.bench_vault import admin, with_db  # noqa: E402
from scripts.fleet_procs import (  # noqa: E402
    ProcSample,
    cpu_by_kind,
    memory_by_kind,
    sample_tree,
    tree_cpu_seconds,
)
from scripts.session_memory import unique_resident_mb  # noqa: E402
from tests.support.daemon import Daemon, free_port  # noqa: E402

MB = 1024 * 1024
BUCKET_S = 5.0  # "snapshotting together": starting within the same 5 s


def session_ids(count: int) -> list[str]:
    """The demo sessions' ids."""
    return [f"fleet-{i:03d}" for i in range(count)]


def max_within(starts: list[float], span: float) -> int:
    """The most starts that fall within any `span` seconds."""
    ordered = sorted(starts)
    return max((bisect.bisect_left(ordered, s + span) - i for i, s in enumerate(ordered)),
               default=0)


def start_spread(starts: list[float], interval: float, sessions: int, origin: float,
                 bucket: float = BUCKET_S) -> dict[str, Any]:
    """How snapshot starts spread: the most within any `bucket` seconds, against what an even
    spread of `sessions` over the interval would give, and each start's offset in the interval
    counted from origin."""
    return {
        "starts": len(starts),
        "max_within_bucket": max_within(starts, bucket),
        "bucket_s": bucket,
        "even_spread_per_bucket": round(sessions * bucket / interval, 2),
        "offsets_s": sorted(round((s - origin) % interval, 1) for s in starts),
    }


def periodic_starts(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Monotonic start times of the periodic snapshots, per session: the line's arrival less
    its duration."""
    out: dict[str, list[float]] = {}
    for e in events:
        if e.get("event") == "snapshot_committed" and e.get("kind") == "periodic":
            out.setdefault(str(e.get("session_id")), []).append(
                e["_t"] - e.get("duration_ms", 0) / 1000)
    return out


def per_session(memory: dict[str, dict[str, float]], cpu: dict[str, float], sessions: int,
                minutes: float) -> dict[str, Any]:
    """Memory (MB) and CPU (CPU-seconds a minute) of each kind of process, per session."""
    return {
        kind: {"rss_mb": round(memory[kind]["rss"] / MB / sessions, 1),
               "pss_mb": round(memory[kind]["pss"] / MB / sessions, 1),
               "cpu_s_per_min": round(cpu[kind] / sessions / minutes, 3)}
        for kind in memory
    }


def median_memory(samples: list[dict[int, ProcSample]]) -> dict[str, dict[str, float]]:
    """Per kind, the median over the samples of the summed RSS, PSS and process count."""
    by_sample = [memory_by_kind(s) for s in samples]
    return {kind: {field: float(statistics.median(m[kind][field] for m in by_sample))
                   for field in by_sample[0][kind]}
            for kind in by_sample[0]}


async def db_counters(url: str, database: str) -> dict[str, int]:
    """WAL position, commits and connections of the bench's database."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint AS wal,
                      (SELECT xact_commit FROM pg_stat_database WHERE datname = $1) AS commits,
                      (SELECT count(*) FROM pg_stat_activity
                        WHERE datname = $1 AND pid <> pg_backend_pid()) AS connections""",
            database)
        assert row is not None
        return {k: int(row[k]) for k in ("wal", "commits", "connections")}
    finally:
        await conn.close()


def run_demo(args: Any, server: str, postmaster: int | None, work: Path) -> dict[str, Any]:
    """The demo part; its figures (see the module's docstring). The daemon's log goes to
    demo-log.jsonl beside the results."""
    log = args.out / "demo-log.jsonl"
    ids = session_ids(args.sessions)
    name = f"sk_fleet_demo_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(server, f'CREATE DATABASE "{name}"'))
    url = with_db(server, name)
    folder = work / f"demo-{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SESSIONKEEPER_") and k not in ("PORT", "DATABASE_URL")}
    env.update(DATABASE_URL=url, PORT=str(free_port()), SESSIONKEEPER_TARGET="demo",
               SESSIONKEEPER_DEMO_PORT=str(free_port()), SESSIONKEEPER_SESSION_IDS=",".join(ids),
               SESSIONKEEPER_PROFILE_DIR=str(folder / "profiles"),
               SESSIONKEEPER_DATA_DIR=str(folder / "state"), SESSIONKEEPER_LOG_FORMAT="json",
               SESSIONKEEPER_DEMO_LINK_AFTER="1", SESSIONKEEPER_DEMO_MESSAGE_RATE=str(args.rate),
               SESSIONKEEPER_SNAPSHOT_INTERVAL=str(args.interval))
    if args.jitter is not None:
        env["SESSIONKEEPER_SNAPSHOT_JITTER"] = str(args.jitter)
    result: dict[str, Any] = {"sessions": args.sessions, "interval_s": args.interval,
                              "jitter": args.jitter, "rate_per_min": args.rate,
                              "window_min": args.minutes, "database": "fresh, " + name}
    daemon = Daemon(env)
    try:
        checkpointed: set[str] = set()
        deadline = time.monotonic() + 120 + 30 * args.sessions
        while len(checkpointed) < len(ids):
            if time.monotonic() > deadline or daemon.proc.poll() is not None:
                raise SystemExit(f"bench-fleet demo: {len(checkpointed)} of {len(ids)} sessions "
                                 "logged in; the daemon's log:\n" + daemon.log_text())
            checkpointed = {str(e.get("session_id")) for e in list(daemon.events)
                            if e.get("event") == "login_checkpoint"}
            time.sleep(0.5)
        result["all_logged_in_s"] = round(time.monotonic() - daemon.started, 1)
        print(f"demo: {len(ids)} sessions logged in after {result['all_logged_in_s']} s; "
              f"settling {args.settle} s, then {args.minutes} min measured", file=sys.stderr)
        time.sleep(args.settle)
        samples: list[dict[int, ProcSample]] = []
        connections: list[int] = []
        db_first = asyncio.run(db_counters(server, name))
        pg_cpu_first = tree_cpu_seconds(postmaster) if postmaster else None
        window_start = time.monotonic()
        window_end = window_start + args.minutes * 60
        while True:
            samples.append(sample_tree(daemon.proc.pid))
            connections.append(asyncio.run(db_counters(server, name))["connections"])
            left = window_end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(args.every, left))
        measured_s = time.monotonic() - window_start
        db_last = asyncio.run(db_counters(server, name))
        pg_cpu_last = tree_cpu_seconds(postmaster) if postmaster else None
        unique = unique_resident_mb(list(samples[-1]))
        minutes = measured_s / 60
        memory = median_memory(samples)
        cpu = cpu_by_kind(samples[0], samples[-1])
        result.update({
            "measured_s": round(measured_s, 1), "samples": len(samples),
            "processes": {k: int(v["processes"]) for k, v in memory.items()},
            "per_session": per_session(memory, cpu, args.sessions, minutes),
            "peak_tree_pss_mb": round(max(memory_by_kind(s)["tree"]["pss"]
                                          for s in samples) / MB, 1),
            "tree_unique_mb": unique,
            "db": {
                "connections_max": max(connections),
                "connections_per_session": round(max(connections) / args.sessions, 2),
                "wal_bytes_per_session_hour": round((db_last["wal"] - db_first["wal"])
                                                    / args.sessions / minutes * 60),
                "commits_per_session_min": round((db_last["commits"] - db_first["commits"])
                                                 / args.sessions / minutes, 2),
                "server_cpu_s_per_session_min": (
                    round((pg_cpu_last - pg_cpu_first) / args.sessions / minutes, 3)
                    if pg_cpu_first is not None and pg_cpu_last is not None else None),
            },
        })
        # Snapshot starts: the first periodic one of each session (the jittered first wait),
        # and every one that started inside the window.
        starts = periodic_starts(list(daemon.events))
        firsts = [s[0] for s in starts.values() if s]
        in_window = [t for s in starts.values() for t in s if window_start <= t <= window_end]
        durations = [e["duration_ms"] for e in list(daemon.events)
                     if e.get("event") == "snapshot_committed" and e.get("kind") == "periodic"
                     and window_start <= e["_t"] <= window_end]
        result["snapshots"] = {
            "first_round": start_spread(firsts, args.interval, args.sessions,
                                        min(firsts, default=0.0)),
            "window": start_spread(in_window, args.interval, args.sessions, window_start),
            "median_duration_ms": statistics.median(durations) if durations else None,
            "unchanged": sum(e.get("event") == "snapshot_unchanged" for e in daemon.events),
            "failed": sum(e.get("event") == "snapshot_failed" for e in daemon.events),
        }
        stop_started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        result["exit_code"] = daemon.wait_exit(120)
        result["sigterm_to_exit_s"] = round(time.monotonic() - stop_started, 1)
        result["warnings"] = dict(Counter(str(e.get("event")) for e in daemon.events
                                          if e.get("level") in ("warning", "error")))
    finally:
        daemon.kill_all()
        # The daemon's whole log, for what the figures do not say (a conflict, a slow login).
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("\n".join(daemon.raw) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        asyncio.run(admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return result
