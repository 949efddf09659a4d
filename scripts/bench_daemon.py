"""Measures the daemon end to end (see scripts/bench-daemon). Results: results/daemon-bench/."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import zstandard  # noqa: E402

from app.settings import Settings  # noqa: E402
from app.store.db import open_pool  # noqa: E402
from app.store.schema import DEFAULT_SCHEMA, server_settings  # noqa: E402
from app.vault.restore import restore_profile  # noqa: E402
from scripts.bench_vault import admin, server_url, with_db  # noqa: E402
from tests.support.daemon import Daemon, free_port  # noqa: E402

SESSION = "bench"


def ready_now(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def profile_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def changed_floor(old: Path, new: Path, level: int = 3) -> int:
    """zstd-3 size of the bytes that differ between two restored generations.

    Per file: the bytes after the common prefix (LevelDB logs grow at the end, tables are new
    files), all compressed together: what a perfect incremental backup would have to write.
    """
    changed = bytearray()
    for path in new.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(new)
        data = path.read_bytes()
        before = (old / rel).read_bytes() if (old / rel).is_file() else b""
        prefix = 0
        limit = min(len(data), len(before))
        while prefix < limit and data[prefix] == before[prefix]:
            step = min(65536, limit - prefix)
            if data[prefix:prefix + step] == before[prefix:prefix + step]:
                prefix += step
            else:
                while data[prefix] == before[prefix]:
                    prefix += 1
                break
        changed += data[prefix:]
    return len(zstandard.ZstdCompressor(level=level).compress(bytes(changed)))


async def new_chunks_by_file(url: str, generation: int) -> dict[str, int]:
    """Which files brought new chunks into a generation (diagnostics for the report)."""
    from app.vault.manifests import load_manifest

    conn = await asyncpg.connect(url, server_settings=server_settings(DEFAULT_SCHEMA))
    try:
        old = (await load_manifest(conn, SESSION, generation - 1)).manifest
        new = (await load_manifest(conn, SESSION, generation)).manifest
    finally:
        await conn.close()
    known = old.digests()
    return {f.path: n for f in new.files if (n := sum(d not in known for d in f.chunks))}


async def restore_to(url: str, generation: int, target: Path) -> None:
    settings = Settings(database_url=url, data_dir=target.parent / "st")  # type: ignore[arg-type]
    async with open_pool(settings, migrate=False) as pool:
        await restore_profile(pool, SESSION, target, generation=generation)


def periodic_figures(env: dict[str, str], args: argparse.Namespace, work: Path, url: str,
                     result: dict[str, Any]) -> None:
    """Periodic snapshots while the page writes messages: bytes uploaded against the floor."""
    daemon = Daemon({**env, "SESSIONKEEPER_SNAPSHOT_INTERVAL": str(args.interval)})
    daemon.wait_for("ready", 60)
    periodic: list[dict[str, Any]] = []
    deadline = time.monotonic() + (args.interval + 15) * (args.periodic + 1)
    while len(periodic) < args.periodic and time.monotonic() < deadline:
        periodic = [e for e in daemon.events
                    if e.get("event") == "snapshot_committed" and e.get("kind") == "periodic"]
        time.sleep(0.5)
    daemon.signal(signal.SIGTERM)
    daemon.wait_exit(60)
    rows = []
    for event in periodic:
        gen = event["generation"]
        old, new = work / f"g{gen - 1}", work / f"g{gen}"
        for g, target in ((gen - 1, old), (gen, new)):
            if not target.exists():
                asyncio.run(restore_to(url, g, target))
        floor = changed_floor(old, new)
        rows.append({"generation": gen, "bytes_uploaded": event["bytes_uploaded"],
                     "new_chunks_by_file": asyncio.run(new_chunks_by_file(url, gen)),
                     "chunks_new": event["chunks_new"], "floor_bytes": floor,
                     "ratio": round(event["bytes_uploaded"] / max(floor, 1), 2)})
        print(f"periodic {gen}: uploaded {event['bytes_uploaded']} B, floor {floor} B",
              file=sys.stderr)
    result["periodic"] = rows
    result["periodic_setup"] = {"interval_s": args.interval, "messages_per_min": args.rate}
    if rows:
        result["periodic_median_ratio"] = statistics.median(r["ratio"] for r in rows)
        result["periodic_median_bytes"] = statistics.median(r["bytes_uploaded"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--history-mb", type=float, default=18.0)
    parser.add_argument("--periodic", type=int, default=3,
                        help="periodic snapshots to measure (0: boot and stop only)")
    parser.add_argument("--timeline", action="store_true",
                        help="print each boot's log lines with their time from spawn")
    parser.add_argument("--interval", type=int, default=60, help="snapshot interval, s")
    parser.add_argument("--rate", type=float, default=30, help="messages per minute")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "daemon-bench")
    args = parser.parse_args()
    base = server_url()
    name = f"sk_dbench_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(base, f'CREATE DATABASE "{name}"'))
    url = with_db(base, name)
    work = Path(tempfile.mkdtemp(prefix="sk-dbench-"))
    profile = work / "profile"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env.update(DATABASE_URL=url, PORT=str(free_port()), SESSIONKEEPER_TARGET="demo",
               SESSIONKEEPER_DEMO_PORT=str(free_port()), SESSIONKEEPER_SESSION_ID=SESSION,
               SESSIONKEEPER_PROFILE_DIR=str(profile), SESSIONKEEPER_DATA_DIR=str(work / "st"),
               SESSIONKEEPER_LOG_FORMAT="json",
               SESSIONKEEPER_DEMO_MESSAGE_RATE=str(args.rate))
    result: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    try:
        # A logged-in profile with history, committed by the login checkpoint.
        first = Daemon({**env, "SESSIONKEEPER_DEMO_LINK_AFTER": "1",
                        "SESSIONKEEPER_DEMO_HISTORY_MB": str(args.history_mb)})
        first.wait_for("login_checkpoint", 300)
        first.signal(signal.SIGTERM)
        first.wait_exit(60)
        result["profile_bytes"] = profile_size(profile)
        print(f"profile: {result['profile_bytes'] / 1e6:.1f} MB on disk", file=sys.stderr)

        boot_spawn, boot_inproc, first_line, stop_ms = [], [], [], []
        for run in range(args.runs):
            shutil.rmtree(profile)
            daemon = Daemon(env)
            began = daemon.started  # just before Popen
            # Spawn to ready: from Popen to the `ready` line read from the daemon's stdout
            # (what a user waits through at a container restart, Python's imports included).
            ready = daemon.wait_for("ready", 60)
            boot_spawn.append((ready["_t"] - began) * 1000)
            assert ready_now(daemon.port), "ready logged but /readyz does not say so"
            assert "qr_required" not in daemon.names(), "restored profile showed a QR code"
            # since_start_ms counts from the start of run_daemon (imports and settings done).
            boot_inproc.append(ready["since_start_ms"])
            # The first line the process writes: imports, settings and logging set up.
            first_line.append((daemon.events[0]["_t"] - began) * 1000)
            if args.timeline:
                for event in daemon.events:
                    print(f"  {(event['_t'] - began) * 1000:6.0f} ms  {event.get('event')}",
                          file=sys.stderr)
            time.sleep(2)  # a few messages to flush at shutdown
            t0 = time.monotonic()
            daemon.signal(signal.SIGTERM)
            code = daemon.wait_exit(60)
            stop_ms.append((time.monotonic() - t0) * 1000)
            done = daemon.wait_for("shutdown_completed", 5)
            assert code == 0 and done["generation"], "no final generation"
            print(f"run {run}: ready {boot_spawn[-1]:.0f} ms after spawn "
                  f"(first line {first_line[-1]:.0f} ms, since_start_ms {boot_inproc[-1]}), "
                  f"stop {stop_ms[-1]:.0f} ms", file=sys.stderr)
        result["spawn_to_ready_ms"] = statistics.median(boot_spawn)
        result["spawn_to_first_line_ms"] = statistics.median(first_line)
        result["boot_to_ready_in_process_ms"] = statistics.median(boot_inproc)
        result["sigterm_to_exit_ms"] = statistics.median(stop_ms)
        result["load_average"] = os.getloadavg()
        result["samples"] = {"spawn_to_ready": boot_spawn, "first_line": first_line,
                             "boot_inproc": boot_inproc, "stop": stop_ms}

        if args.periodic:  # --periodic 0: boot and stop figures only
            periodic_figures(env, args, work, url, result)
    finally:
        asyncio.run(admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
