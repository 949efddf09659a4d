"""Measures the vault on profile-shaped trees of several sizes, each CLI call its own process.

For each size: first snapshot (time, bytes uploaded, bytes the tables grew by), a second
snapshot after a small chat-like change, a snapshot of the unchanged profile, and a restore;
peak RSS of each process from wait4(). Medians over --runs runs. Results go to
results/vault-bench/ as JSON and Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from app.snapshot.sealing import generate_key  # noqa: E402
from app.store.schema import DEFAULT_SCHEMA, server_settings  # noqa: E402
from tests.support.profile_tree import build_profile  # noqa: E402

MiB = 1024 * 1024


def run_cli(env: dict[str, str], *args: str) -> tuple[dict[str, Any], float, int]:
    """(JSON output, wall seconds, peak RSS bytes) of one CLI process."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "app", *args, "--json"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"sessionkeeper {' '.join(args)} failed ({proc.returncode})")
    return json.loads(out), wall, usage.ru_maxrss * 1024


async def table_bytes(url: str) -> int:
    conn = await asyncpg.connect(url, server_settings=server_settings(DEFAULT_SCHEMA))
    try:
        size: int = await conn.fetchval(
            "SELECT pg_total_relation_size('chunks') + pg_total_relation_size('snapshots')")
        return size
    finally:
        await conn.close()


async def admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def server_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    except OSError:
        import pgserver

        server = pgserver.get_server(str(ROOT / ".sessionkeeper/bench-pg"), cleanup_mode="stop")
        return str(server.get_uri())


def with_db(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def bench_size(size_mb: int, runs: int, base_url: str, work: Path,
               encryption: bool = False) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}

    tree_root = work / f"profile-{size_mb}"
    shutil.rmtree(tree_root, ignore_errors=True)
    # LevelDB's own compression roughly halves the records, so ask for about a full size of
    # records plus 45% in stored blobs to land near size_mb on disk.
    blob_count = max(4, size_mb // 5)
    build_profile(tree_root, idb_bytes=size_mb * MiB, blob_count=blob_count,
                  blob_size=size_mb * MiB * 45 // 100 // blob_count)
    profile_bytes = sum(p.stat().st_size for p in tree_root.rglob("*") if p.is_file())

    def one_run(run: int, keyed: bool) -> None:
        """One run; with keyed, on an encrypted store (metrics prefixed `keyed_`), then a
        key rotation of it (`keyed_rekey_ms`)."""
        prefix = "keyed_" if keyed else ""

        def add(key: str, value: float) -> None:
            samples.setdefault(prefix + key, []).append(value)

        name = f"sk_bench_{uuid.uuid4().hex[:8]}"
        asyncio.run(admin(base_url, f'CREATE DATABASE "{name}"'))
        url = with_db(base_url, name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_ENC")}
        env.update(DATABASE_URL=url, SESSIONKEEPER_LOG_LEVEL="warning",
                   SESSIONKEEPER_DATA_DIR=str(work / "state"))
        if keyed:
            env["SESSIONKEEPER_ENCRYPTION_KEY"] = generate_key()
        try:
            run_cli(env, "migrate")
            # A fresh copy of the tree each run: the stat cache of run N must not help run N+1.
            live = work / f"live-{size_mb}"
            shutil.rmtree(live, ignore_errors=True)
            shutil.rmtree(work / f".live-{size_mb}.sessionkeeper", ignore_errors=True)
            shutil.copytree(tree_root, live, symlinks=True)
            before = asyncio.run(table_bytes(url))
            out, wall, rss = run_cli(env, "snapshot", "s", "--profile", str(live))
            add("first_ms", out["duration_ms"])
            add("first_wall_s", wall)
            add("first_uploaded", out["bytes_uploaded"])
            add("first_table_growth", asyncio.run(table_bytes(url)) - before)
            add("snapshot_rss", rss)
            add("bytes_raw", out["bytes_raw"])
            # A small chat-like change: 40 messages, a cookie, one stored photo.
            from tests.support.profile_tree import ProfileTree

            changed = ProfileTree(live, seed=run + 100)
            changed.add_messages(40, size=1024)
            changed.set_cookie("session", f"v{run}")
            changed.add_blob(f"photo{run}", 150_000)
            before = asyncio.run(table_bytes(url))
            out, wall, rss = run_cli(env, "snapshot", "s", "--profile", str(live))
            add("second_ms", out["duration_ms"])
            add("second_uploaded", out["bytes_uploaded"])
            add("second_chunks_new", out["chunks_new"])
            add("second_table_growth", asyncio.run(table_bytes(url)) - before)
            add("snapshot_rss", rss)
            out, wall, rss = run_cli(env, "snapshot", "s", "--profile", str(live))
            assert not out["changed"], "unchanged profile produced a generation"
            add("unchanged_ms", out["duration_ms"])
            add("unchanged_uploaded", out["bytes_uploaded"])
            target = work / f"restored-{size_mb}"
            shutil.rmtree(target, ignore_errors=True)
            out, wall, rss = run_cli(env, "restore", "s", "--profile", str(target))
            add("restore_ms", out["duration_ms"])
            add("restore_wall_s", wall)
            add("restore_rss", rss)
            shutil.rmtree(target, ignore_errors=True)
            _, _, rss = run_cli(env, "sessions")
            add("idle_cli_rss", rss)
            if keyed:
                out, wall, rss = run_cli(env, "rekey", "--new-key", generate_key(),
                                         "--old-key", env["SESSIONKEEPER_ENCRYPTION_KEY"])
                assert out["left_sealed_with_other_keys"] == 0, out
                add("rekey_ms", out["duration_ms"])
                add("rekey_bytes", out["bytes_resealed"])
        finally:
            asyncio.run(admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    for run in range(runs):
        for keyed in ((False, True) if encryption else (False,)):
            one_run(run, keyed)
    result = {"size_mb": size_mb, "profile_bytes": profile_bytes, "runs": runs}
    for key, values in samples.items():
        result[key] = median(values) if "rss" not in key else max(values)
    return result


def markdown(results: list[dict[str, Any]], machine: str) -> str:
    lines = [
        f"Machine: {machine}. Medians of the runs; RSS is the peak over all runs.",
        "",
        "| profile | kept bytes | first snapshot | uploaded | second (small change) | uploaded "
        "| unchanged | restore | peak RSS snapshot | peak RSS restore | CLI idle RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['profile_bytes'] / MiB:.0f} MiB | {r['bytes_raw'] / MiB:.1f} MiB "
            f"| {r['first_ms']:.0f} ms | {r['first_uploaded'] / MiB:.1f} MiB "
            f"| {r['second_ms']:.0f} ms | {r['second_uploaded'] / 1024:.0f} KiB "
            f"| {r['unchanged_ms']:.0f} ms | {r['restore_ms']:.0f} ms "
            f"| {r['snapshot_rss'] / MiB:.0f} MiB | {r['restore_rss'] / MiB:.0f} MiB "
            f"| {r['idle_cli_rss'] / MiB:.0f} MiB |")
    keyed = [r for r in results if "keyed_first_ms" in r]
    if keyed:
        lines += ["", "Encryption (same runs, a keyed store beside each plaintext one; ratios "
                  "keyed/plaintext of the medians):", "",
                  "| profile | first snapshot | ratio | restore | ratio | rekey (rotation) "
                  "| rekey per 100 MB stored |", "|---|---|---|---|---|---|---|"]
        for r in keyed:
            per_100 = r["keyed_rekey_ms"] / max(r["keyed_rekey_bytes"] / (100 * MiB), 1e-9)
            lines.append(
                f"| {r['profile_bytes'] / MiB:.0f} MiB | {r['keyed_first_ms']:.0f} ms "
                f"| {r['keyed_first_ms'] / r['first_ms']:.2f} | {r['keyed_restore_ms']:.0f} ms "
                f"| {r['keyed_restore_ms'] / r['restore_ms']:.2f} | {r['keyed_rekey_ms']:.0f} ms "
                f"| {per_100:.0f} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="20,100,500", help="profile sizes in MB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "vault-bench")
    parser.add_argument("--encryption", action="store_true",
                        help="each run also on an encrypted store (keyed_* figures and a "
                        "rotation's keyed_rekey_ms)")
    args = parser.parse_args()
    base = server_url()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    results = []
    scratch = ROOT / ".sessionkeeper"
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            print(f"size {size} MB: {args.runs} runs", file=sys.stderr, flush=True)
            results.append(bench_size(size, args.runs, base, Path(tmp), args.encryption))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": machine, "results": results},
                                                      indent=1))
    (args.out / "results.md").write_text(markdown(results, machine))
    print(markdown(results, machine))


if __name__ == "__main__":
    main()
