"""sessionkeeper against the RemoteAuth approach, side by side, in one run (see scripts/bench).

Profiles: for each size, scripts/gen_profile.py builds a logged-in demo-site profile in a real
Chromium (profile A: SIZE MB of chat history with photo Blobs, credentials, a service worker;
then opened once more, idle, so LevelDB has turned the sync's log into tables), and a copy of
it that the page then writes chat into for --chat-minutes at --rate messages per minute
(profile B). Both are cached in .sessionkeeper/bench-profiles.

Each run, for each system, on a fresh database of one PostgreSQL: a fresh copy of A is backed
up (first snapshot); the changes the chat writer made (A -> B, replayed file by file in place,
so untouched files keep their inode and mtime) are backed up (steady state); B is backed up
again untouched (unchanged); then restored into an empty directory and checked against B. For
sessionkeeper also: a daemon restores B, shows the page ready, and is sent SIGTERM; the time
to exit with its final snapshot committed. Every operation is its own process: the duration
it reports (after interpreter start), wall time, and peak RSS (scripts/maxrss.py).

Bytes written are read from PostgreSQL: WAL (pg_current_wal_insert_lsn before and after) and
the growth of the database (pg_database_size). By default the PostgreSQL is a private
embedded server (nothing else writes WAL there) with autovacuum off and checkpoints spaced out,
so the counts are exact and no checkpoint full-page images land on either side by chance.

The physical floor of the steady state is the data that is really new in it (physical_floor).

Output: results/bench/results.json, results.md and bytes-per-hour.png.
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import zstandard  # noqa: E402
from fastcdc import fastcdc  # noqa: E402

from app.demo.server import DemoSite  # noqa: E402
from app.settings import Settings  # noqa: E402
from scripts.bench_vault import with_db  # noqa: E402
from scripts.gen_profile import generate, meta_path  # noqa: E402
from scripts.readme_block import rewrite  # noqa: E402
from tests.support.daemon import Daemon, free_port  # noqa: E402

MB = 1_000_000
SESSION = "bench"
SYSTEMS = ("sessionkeeper", "zip-bytea", "zip9-base64")
BASELINE = "zip-bytea"
README_BLOCK = "bench"
# Where sessionkeeper's tables live (SESSIONKEEPER_DB_SCHEMA, left at its default here).
SCHEMA = Settings.model_fields["db_schema"].default
# The baseline backs up every 5 minutes (backupSyncIntervalMs: 300000, as in the write-up);
# sessionkeeper's default SESSIONKEEPER_SNAPSHOT_INTERVAL is 300 s too.
BACKUPS_PER_HOUR = 12
SETTLE_MINUTES = 0.25


# ------------------------------------------------------------------ PostgreSQL


def private_server(path: Path) -> str:
    """A private embedded PostgreSQL for exact WAL counts; its URL."""
    import pgserver

    server = pgserver.get_server(str(path), cleanup_mode="stop")  # type: ignore[attr-defined]
    for setting in ("autovacuum = off", "max_wal_size = '32GB'", "checkpoint_timeout = '1h'"):
        server.psql(f"ALTER SYSTEM SET {setting};")
    server.psql("SELECT pg_reload_conf();")
    return str(server.get_uri())


async def sql(url: str, query: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def db_counters(url: str) -> tuple[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT pg_current_wal_insert_lsn()::text AS lsn, "
            "pg_database_size(current_database()) AS size")
        assert row is not None
        return row["lsn"], row["size"]
    finally:
        await conn.close()


async def wal_since(url: str, lsn: str) -> int:
    return int(await sql(url, f"SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{lsn}')"))


# ------------------------------------------------------------------ processes


@dataclass
class Measured:
    out: dict[str, Any]
    wall_ms: float
    rss: int
    wal_bytes: int = 0
    growth_bytes: int = 0


def run_measured(argv: list[str], env: dict[str, str]) -> Measured:
    """Run one command to the end: its JSON output, wall time and peak RSS (see maxrss.py)."""
    rss_file = Path(tempfile.gettempdir()) / f"sessionkeeper-maxrss-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-S", str(ROOT / "scripts" / "maxrss.py"),
                           str(rss_file), *argv], env=env, cwd=ROOT, capture_output=True,
                          check=False)
    wall = (time.monotonic() - started) * 1000
    try:
        rss = int(rss_file.read_text()) if rss_file.exists() else 0
    finally:
        rss_file.unlink(missing_ok=True)
    if proc.returncode or not rss:
        raise SystemExit(f"{' '.join(argv[1:5])} failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return Measured(json.loads(proc.stdout), wall, rss)


class System:
    """One backup system: how to back up and restore a profile through a process."""

    def __init__(self, name: str, url: str, state: Path) -> None:
        self.name = name
        self.url = url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
        # Temporary files (the baseline's copy and zip) go where the profiles are.
        (state.parent / "tmp").mkdir(parents=True, exist_ok=True)
        self.env.update(TMPDIR=str(state.parent / "tmp"))
        self.env.update(DATABASE_URL=url, SESSIONKEEPER_LOG_LEVEL="warning",
                        SESSIONKEEPER_DATA_DIR=str(state), SESSIONKEEPER_SESSION_ID=SESSION)

    def _argv(self, action: str, profile: Path) -> list[str]:
        if self.name == "sessionkeeper":
            cli = "snapshot" if action == "backup" else "restore"
            return [sys.executable, "-m", "app", cli, SESSION, "--profile", str(profile),
                    "--json"]
        return [sys.executable, str(ROOT / "scripts" / "remoteauth_baseline.py"), action,
                "--variant", self.name, "--database-url", self.url, "--session", SESSION,
                "--profile", str(profile)]

    def prepare(self) -> None:
        if self.name == "sessionkeeper":
            run_measured([sys.executable, "-m", "app", "migrate", "--json"], self.env)

    def run(self, action: str, profile: Path) -> Measured:
        lsn, size = asyncio.run(db_counters(self.url))
        measured = run_measured(self._argv(action, profile), self.env)
        measured.wal_bytes = asyncio.run(wal_since(self.url, lsn))
        measured.growth_bytes = asyncio.run(db_counters(self.url))[1] - size
        return measured


# ------------------------------------------------------------------ profiles


@dataclass
class ProfilePair:
    size_mb: int
    a: Path
    b: Path
    facts_a: dict[str, Any]
    facts_b: dict[str, Any]
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def _diff(pair: ProfilePair) -> None:
    a, b = _files(pair.a), _files(pair.b)
    pair.changed = sorted(rel for rel, path in b.items()
                          if rel not in a or not filecmp.cmp(a[rel], path, shallow=False))
    pair.removed = sorted(set(a) - set(b))


def replay_changes(pair: ProfilePair, live: Path) -> None:
    """Turn a copy of A into B in place: what the chat writer changed, file by file."""
    for rel in pair.removed:
        (live / rel).unlink(missing_ok=True)
    for rel in pair.changed:
        target = live / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".bench-tmp")
        shutil.copy2(pair.b / rel, tmp)
        os.replace(tmp, target)


def _cached(profile: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    meta = meta_path(profile)
    if not profile.is_dir() or not meta.is_file():
        return None
    facts: dict[str, Any] = json.loads(meta.read_text())
    return facts if all(facts.get(k) == v for k, v in want.items()) else None


async def build_profiles(sizes: list[int], store: Path, port: int, chat_minutes: float,
                         rate: float) -> list[ProfilePair]:
    """A (linked, history synced) sequentially, then B (A plus chat) for all sizes at once."""
    pairs: list[ProfilePair] = []
    for size in sizes:
        a = store / f"{size}mb" / "a"
        facts_a = _cached(a, {"port": port, "history_mb": float(size),
                              "chat_minutes": SETTLE_MINUTES})
        if facts_a is None:
            shutil.rmtree(a.parent, ignore_errors=True)
            a.parent.mkdir(parents=True)
            print(f"generating a {size} MB profile", file=sys.stderr, flush=True)
            site = DemoSite(port=port, message_rate=0, history_kb=size * 1024)
            await site.start()
            try:
                await generate(a, site, chat_minutes=0)
                # Reopen once, idle: LevelDB turns the log of the history sync into tables
                # when it opens, which would otherwise land in the steady-state delta.
                facts_a = await generate(a, site, chat_minutes=SETTLE_MINUTES)
            finally:
                await site.stop()
        pairs.append(ProfilePair(size, a, a.parent / "b", facts_a, {}))
    todo = []
    for pair in pairs:
        want = {"port": port, "chat_minutes": chat_minutes, "rate_per_minute": float(rate),
                "from": str(pair.a)}
        cached = _cached(pair.b, want)
        if cached is not None:
            pair.facts_b = cached
        else:
            shutil.rmtree(pair.b, ignore_errors=True)
            meta_path(pair.b).unlink(missing_ok=True)
            shutil.copytree(pair.a, pair.b, symlinks=True)
            todo.append(pair)
    if todo:
        print(f"chat writer: {chat_minutes} min at {rate}/min on {len(todo)} profile(s)",
              file=sys.stderr, flush=True)
        site = DemoSite(port=port, message_rate=rate)
        await site.start()
        try:
            results = await asyncio.gather(*(generate(p.b, site, chat_minutes=chat_minutes)
                                             for p in todo))
        finally:
            await site.stop()
        for pair, facts in zip(todo, results, strict=True):
            facts["from"] = str(pair.a)
            meta_path(pair.b).write_text(json.dumps(facts, indent=1))
            pair.facts_b = facts
    for pair in pairs:
        _diff(pair)
    return pairs


def tree_differences(expected: Path, got: Path, sub: str) -> list[str]:
    """Files of expected/sub missing from got/sub or with other bytes. LOCK and LevelDB's
    informational LOG files aside: sessionkeeper does not keep them, by design."""
    want = {k: v for k, v in _files(expected / sub).items()
            if k.rsplit("/", 1)[-1] not in ("LOCK", "LOG", "LOG.old")}
    have = _files(got / sub)
    return [k for k, v in want.items() if k not in have or not filecmp.cmp(v, have[k], False)]


# ------------------------------------------------------------------ one size


def ready_now(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def sigterm_run(system: System, pair: ProfilePair, work: Path, demo_port: int,
                rate: float) -> dict[str, Any]:
    """Daemon restores B, shows ready, writes chat for 3 s; SIGTERM to exit."""
    system.run("backup", _fresh_copy(pair.b, work / "seed"))
    profile = work / "daemon-profile"
    shutil.rmtree(profile, ignore_errors=True)
    env = {**system.env, "PORT": str(free_port()), "SESSIONKEEPER_TARGET": "demo",
           "SESSIONKEEPER_DEMO_PORT": str(demo_port), "SESSIONKEEPER_PROFILE_DIR": str(profile),
           "SESSIONKEEPER_LOG_FORMAT": "json", "SESSIONKEEPER_LOG_LEVEL": "info",
           "SESSIONKEEPER_DEMO_MESSAGE_RATE": str(rate)}
    daemon = Daemon(env)
    try:
        deadline = time.monotonic() + 300
        while not ready_now(daemon.port):
            if time.monotonic() > deadline or daemon.proc.poll() is not None:
                raise SystemExit("daemon not ready:\n" + daemon.log_text()[-3000:])
            time.sleep(0.05)
        if "qr_required" in daemon.names():
            raise SystemExit("the restored profile showed a QR code")
        time.sleep(3)
        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait_exit(120)
        stop_ms = (time.monotonic() - began) * 1000
    finally:
        if daemon.proc.poll() is None:
            daemon.kill_all()
    done = daemon.wait_for("shutdown_completed", 5)
    committed = asyncio.run(sql(system.url, f"SELECT max(generation) FROM {SCHEMA}.snapshots "
                                f"WHERE session_id = '{SESSION}' AND kind = 'shutdown'"))
    if code != 0 or not done.get("generation") or committed != done["generation"]:
        raise SystemExit(f"no final snapshot committed (exit {code}, {done})")
    return {"sigterm_ms": stop_ms, "final_uploaded": _final_uploaded(daemon)}


def _final_uploaded(daemon: Daemon) -> int:
    for event in reversed(daemon.events):
        if event.get("event") == "snapshot_committed" and event.get("kind") == "shutdown":
            return int(event.get("bytes_uploaded", 0))
    return 0


def _fresh_copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(dst.with_name(f".{dst.name}.sessionkeeper"), ignore_errors=True)
    shutil.copytree(src, dst, symlinks=True)
    return dst


def bench_run(name: str, base: str, pair: ProfilePair, work: Path, run: int, demo_port: int,
              rate: float, floor: dict[int, int]) -> dict[str, Any]:
    db = f"sk_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(sql(base, f'CREATE DATABASE "{db}"'))
    url = with_db(base, db)
    system = System(name, url, work / "state")
    row: dict[str, Any] = {}
    try:
        system.prepare()
        asyncio.run(sql(base, "CHECKPOINT"))
        live = _fresh_copy(pair.a, work / "live")
        for op in ("first", "steady", "unchanged"):
            if op == "steady":
                replay_changes(pair, live)
            m = system.run("backup", live)
            row[f"{op}_ms"] = m.out["duration_ms"]
            row[f"{op}_wall_ms"] = m.wall_ms
            row[f"{op}_wal_bytes"] = m.wal_bytes
            row[f"{op}_growth_bytes"] = m.growth_bytes
            row[f"{op}_rss"] = m.rss
            if name == "sessionkeeper":
                row[f"{op}_uploaded"] = m.out["bytes_uploaded"]
                row[f"{op}_generation"] = m.out.get("generation")
        restored = work / "restored"
        shutil.rmtree(restored, ignore_errors=True)
        m = system.run("restore", restored)
        row.update(restore_ms=m.out["duration_ms"], restore_wall_ms=m.wall_ms,
                   restore_rss=m.rss)
        for sub in ("Default/IndexedDB", "Default/Local Storage"):
            if differ := tree_differences(pair.b, restored, sub):
                raise SystemExit(f"{name}: the restored {sub} differs from the profile: "
                                 f"{differ[:10]}")
        if name == "sessionkeeper" and pair.size_mb not in floor:
            floor[pair.size_mb] = _floor(url, row, work)
        if name == "sessionkeeper":
            row.update(sigterm_run(system, pair, work, demo_port, rate))
    finally:
        asyncio.run(sql(base, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    print(json.dumps({"size_mb": pair.size_mb, "system": name, "run": run,
                      **{k: round(v) if isinstance(v, float) else v for k, v in row.items()}}),
          file=sys.stderr, flush=True)
    return row


def _floor(url: str, row: dict[str, Any], work: Path) -> int:
    """The physical floor between the first and the steady generation (see physical_floor)."""
    from scripts.bench_daemon import restore_to

    old, new = work / "floor-old", work / "floor-new"
    for gen, target in ((row["first_generation"], old), (row["steady_generation"], new)):
        shutil.rmtree(target, ignore_errors=True)
        asyncio.run(restore_to(url, gen, target))
    size = physical_floor(old, new)
    shutil.rmtree(old)
    shutil.rmtree(new)
    return size


def _fine_pieces(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[c.offset : c.offset + c.length]
            for c in fastcdc(view, min_size=64, avg_size=256, max_size=2048)]


def physical_floor(old: Path, new: Path) -> int:
    """zstd-3 size of the data that is really new in `new`: the changed files cut into
    content-defined pieces of about 256 bytes, the pieces found nowhere in `old` dropped, the
    rest compressed together. Thirty times finer than sessionkeeper's chunks; it comes out
    close to `zstd --patch-from=old new`."""
    before, after = _files(old), _files(new)
    known = {hashlib.sha256(p).digest() for path in before.values()
             for p in _fine_pieces(path.read_bytes())}
    fresh = bytearray()
    for rel, path in after.items():
        data = path.read_bytes()
        if rel in before and before[rel].read_bytes() == data:
            continue
        for piece in _fine_pieces(data):
            digest = hashlib.sha256(piece).digest()
            if digest not in known:
                known.add(digest)
                fresh += piece
    return len(zstandard.ZstdCompressor(level=3).compress(bytes(fresh)))


# ------------------------------------------------------------------ report


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = rows[0].keys()
    out: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values and not key.endswith("_generation"):
            out[key] = max(values) if key.endswith("_rss") else statistics.median(values)
    return out


# The targets of issue 15 (restore at 1/3 of the baseline, 1/2 the floor of acceptable; steady
# bytes within 2x the physical floor at 20 MB, 4x above; the first snapshot at 1/3; peak RSS
# flat within 1.25 across sizes) beside the earlier ones (steady bytes at 1/40 of the baseline,
# nothing written for an unchanged profile, under 100 ms per 100 MB).
def floor_limit(size_mb: int) -> float:
    """How far above the physical floor the steady state may write at this profile size."""
    return 2.0 if size_mb <= 20 else 4.0


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def add(size: int, target: str, value: float, limit: float, met: bool) -> None:
        targets.append({"size_mb": size, "target": target, "value": round(value, 4),
                        "limit": limit, "met": met})

    rss = []
    for size, by_system in results["sizes"].items():
        ours, base = by_system["sessionkeeper"], by_system[BASELINE]
        size_i = int(size)
        for measure in ("wal_bytes", "growth_bytes"):
            ratio = ours[f"steady_{measure}"] / max(base[f"steady_{measure}"], 1)
            add(size_i, f"steady bytes ({measure}) / zip baseline <= 1/40", ratio, 1 / 40,
                ratio <= 1 / 40)
        floor, limit = by_system["floor_bytes"], floor_limit(size_i)
        ratio = ours["steady_wal_bytes"] / max(floor, 1)
        add(size_i, f"steady WAL bytes / physical floor <= {limit:g}", ratio, limit,
            ratio <= limit)
        ratio = ours["steady_growth_bytes"] / max(floor, 1)
        add(size_i, f"steady stored bytes / physical floor <= {limit:g}", ratio, limit,
            ratio <= limit)
        ratio = ours["first_ms"] / base["first_ms"]
        add(size_i, "first snapshot time / zip baseline <= 1/3", ratio, 1 / 3, ratio <= 1 / 3)
        ratio = ours["restore_ms"] / base["restore_ms"]
        add(size_i, "restore time / zip baseline <= 1/3", ratio, 1 / 3, ratio <= 1 / 3)
        add(size_i, "restore time / zip baseline <= 1/2 (acceptable)", ratio, 1 / 2,
            ratio <= 1 / 2)
        add(size_i, "unchanged: bytes written (WAL) == 0", ours["unchanged_wal_bytes"], 0,
            ours["unchanged_wal_bytes"] == 0 and ours["unchanged_growth_bytes"] == 0)
        if size_i >= 100:  # the figure is 100 ms for 100 MB; bigger ones scale
            add(size_i, "unchanged: time < 100 ms per 100 MB", ours["unchanged_ms"], size_i,
                ours["unchanged_ms"] < size_i)
        rss.append(max(ours["first_rss"], ours["steady_rss"], ours["unchanged_rss"],
                       ours["restore_rss"]))
    if len(rss) > 1:
        spread = max(rss) / min(rss)
        add(0, "peak RSS flat across sizes: max/min <= 1.25", spread, 1.25, spread <= 1.25)
    return targets


def summary(results: dict[str, Any]) -> str:
    """The targets as one row each, a column per profile size: a figure in bold misses."""
    sizes = [int(s) for s in results["sizes"]]
    rows: dict[str, dict[int, dict[str, Any]]] = {}
    for t in results["targets"]:
        name = t["target"]
        if "physical floor" in name:  # its limit depends on the size
            name = name.rsplit("<=", 1)[0] + "<= 2 at 20 MB, 4 above"
        rows.setdefault(name, {})[t["size_mb"]] = t
    lines = ["| target | " + " | ".join(f"{s} MB" for s in sizes) + " | |",
             "|---|" + "---|" * len(sizes) + "---|"]
    for name, by_size in rows.items():
        if 0 in by_size:  # one figure across all sizes
            cells = [""] * (len(sizes) - 1) + [_cell(by_size[0])]
        else:
            cells = [_cell(by_size[s]) if s in by_size else "" for s in sizes]
        met = all(t["met"] for t in by_size.values())
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {'met' if met else '**missed**'} |")
    return "\n".join(lines) + "\n"


def _cell(t: dict[str, Any]) -> str:
    value = t["value"]
    shown = f"{value:.0f}" if value >= 100 or value == 0 else f"{value:.3g}"
    return shown if t["met"] else f"**{shown}**"


def readme_block(results: dict[str, Any]) -> str:
    """What scripts/bench --readme puts in README.md's bench block."""
    return (f"Produced by `{results['command']}` on {results.get('date', 'an earlier run')}.\n\n"
            f"{markdown(results)}\nAgainst the zip baseline in the same run (a figure in bold "
            f"misses its target):\n\n{summary(results)}")


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding path (`stat -f`), as the results name it."""
    path.mkdir(parents=True, exist_ok=True)
    found = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                           text=True, check=False)
    return found.stdout.strip() or "unknown"


def markdown(results: dict[str, Any]) -> str:
    where = (f" Profiles copied, backed up and restored on {results['work_fs']}."
             if "work_fs" in results else "")
    lines = [
        f"Machine: {results['machine']}. PostgreSQL: {results['postgres']}.{where} "
        f"Medians of {results['runs']} runs (peak RSS: the highest). Steady state: "
        f"{results['chat_minutes']} min of chat at {results['rate']} messages/min. "
        "Bytes written: WAL from PostgreSQL; the database's growth in brackets.",
        "",
        "| profile | system | first snapshot | written | steady snapshot | written "
        "| unchanged | written | restore | SIGTERM to exit | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, by_system in results["sizes"].items():
        for name in SYSTEMS:
            r = by_system[name]
            sigterm = f"{r['sigterm_ms'] / 1000:.2f} s" if "sigterm_ms" in r else "n/a"
            peak = max(r["first_rss"], r["steady_rss"], r["unchanged_rss"], r["restore_rss"])
            lines.append(
                f"| {size} MB ({fmt_bytes(by_system['profile_bytes'])}) | {name} "
                f"| {r['first_ms'] / 1000:.2f} s "
                f"| {fmt_bytes(r['first_wal_bytes'])} ({fmt_bytes(r['first_growth_bytes'])}) "
                f"| {r['steady_ms'] / 1000:.2f} s "
                f"| {fmt_bytes(r['steady_wal_bytes'])} ({fmt_bytes(r['steady_growth_bytes'])}) "
                f"| {r['unchanged_ms']:.0f} ms "
                f"| {fmt_bytes(r['unchanged_wal_bytes'])} "
                f"({fmt_bytes(r['unchanged_growth_bytes'])}) "
                f"| {r['restore_ms'] / 1000:.2f} s | {sigterm} | {fmt_bytes(peak)} |")
    floors = ", ".join(f"{s} MB: {fmt_bytes(b['floor_bytes'])}"
                       for s, b in results["sizes"].items())
    lines += ["", "Physical floor (the data that is really new in the steady-state generation, "
              f"found at a 256-byte grain and compressed together with zstd-3): {floors}", "",
              "| target | profile | measured | limit | met |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['size_mb'] or 'all'} MB | {t['value']:g} "
                     f"| {t['limit']:g} | {'met' if t['met'] else '**missed**'} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = list(results["sizes"])
    x = [results["sizes"][s]["profile_bytes"] / MB for s in sizes]
    for name, style in zip(SYSTEMS, ("o-", "s--", "^:"), strict=True):
        y = [results["sizes"][s][name]["steady_wal_bytes"] * BACKUPS_PER_HOUR / MB
             for s in sizes]
        ax.plot(x, y, style, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{v:.0f}" for v in x])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("profile size on disk (MB)")
    ax.set_ylabel("MB written to PostgreSQL per hour (WAL)")
    ax.set_title(f"Backups every 5 min, chat at {results['rate']:g} messages/min")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20,100,500", help="profile sizes in MB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chat-minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=30.0, help="messages per minute")
    parser.add_argument("--demo-port", type=int, default=8766)
    parser.add_argument("--database-url", default=None,
                        help="a server to use instead of the private embedded one "
                             "(WAL counts then include whatever else writes there)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--work", type=Path, default=ROOT / ".sessionkeeper" / "bench-work",
                        help="where the profiles are copied, backed up from and restored to, "
                             "for every system (e.g. a tmpfs: see the README)")
    parser.add_argument("--readme", action="store_true",
                        help="then rewrite README.md's bench block from the results")
    parser.add_argument("--readme-only", action="store_true",
                        help="run nothing: rewrite results.md and README.md's bench block from "
                             "the results.json in --out (the targets checked again)")
    parser.add_argument("--readme-path", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    if args.readme_only:
        source = args.out / "results.json"
        try:
            results = json.loads(source.read_text())
            results.setdefault("date", time.strftime("%Y-%m-%d",
                                                     time.localtime(source.stat().st_mtime)))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench: cannot read {source}: {exc}") from None
        report(results, args)
        return
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",")})
    except ValueError:
        raise SystemExit(f"bench: --sizes must be integers, got {args.sizes!r}") from None
    if args.runs < 1 or not sizes or min(sizes) < 1:
        raise SystemExit("bench: --runs and every size must be >= 1")
    scratch = ROOT / ".sessionkeeper"
    scratch.mkdir(exist_ok=True)
    base = args.database_url or private_server(scratch / "bench-pg")
    postgres = asyncio.run(sql(base, "SHOW server_version"))
    pairs = asyncio.run(build_profiles(sizes, scratch / "bench-profiles", args.demo_port,
                                       args.chat_minutes, args.rate))
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict[str, Any] = {
        "command": "scripts/bench " + " ".join(sys.argv[1:]),
        "work_fs": filesystem_of(work),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') // 2**30} GiB, "
                   f"Python {platform.python_version()}",
        "postgres": f"{postgres} ({'given' if args.database_url else 'private embedded'})",
        "runs": args.runs, "chat_minutes": args.chat_minutes, "rate": args.rate,
        "date": time.strftime("%Y-%m-%d"), "sizes": {},
    }
    floor: dict[int, int] = {}
    try:
        for pair in pairs:
            rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SYSTEMS}
            for run in range(args.runs):
                for name in SYSTEMS:  # interleaved, so drift hits all three alike
                    rows[name].append(bench_run(name, base, pair, work, run, args.demo_port,
                                                args.rate, floor))
            results["sizes"][str(pair.size_mb)] = {
                "profile_bytes": pair.facts_a["profile_bytes"],
                "indexeddb_bytes": pair.facts_a["indexeddb_bytes"],
                "messages_written": pair.facts_b["messages_written"],
                "files_changed": len(pair.changed), "files_removed": len(pair.removed),
                "floor_bytes": floor[pair.size_mb],
                **{name: summarize(r) for name, r in rows.items()},
                "samples": rows,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args)
    chart(results, args.out / "bytes-per-hour.png")


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Check the targets, write results.json and results.md, and with --readme or
    --readme-only the README's bench block."""
    results["targets"] = check_targets(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(markdown(results) + "\n" + summary(results))
    if args.readme or args.readme_only:
        try:
            rewrite(args.readme_path, README_BLOCK, readme_block(results))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench: cannot rewrite {args.readme_path}: {exc}") from None
    print(markdown(results) + "\n" + summary(results))


if __name__ == "__main__":
    main()
