"""A fleet, measured (see scripts/bench-fleet): `demo` runs many demo sessions in one daemon,
`vault` writes many sessions' snapshots from several processes at once without browsers, both
by default; `readme` only rewrites the README's block from results.md.

Each part keeps its figures in results/fleet-bench/results.json (a later run of one part keeps
the other's), the projection for a larger fleet is computed from whatever is there, and
results.md is written from all of it; --readme puts results.md between the README's
fleet-bench markers. By default the PostgreSQL is a private embedded one (pgserver, its
defaults: autovacuum on), so WAL, commits and the server's CPU are this bench's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import psutil  # noqa: E402

from scripts.fleet_report import FleetPlan, markdown, projection, replace_block  # noqa: E402
from scripts.fleet_vault import VaultPlan  # noqa: E402

POSTGRES_SETTINGS = ("server_version", "shared_buffers", "max_wal_size", "checkpoint_timeout",
                     "autovacuum", "synchronous_commit", "max_connections")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="all",
                        choices=("all", "demo", "vault", "readme"))
    parser.add_argument("--rate", type=float, default=30.0,
                        help="messages a minute per session (the demo site's default)")
    demo = parser.add_argument_group("demo")
    demo.add_argument("--sessions", type=int, default=20, help="sessions in the one daemon")
    demo.add_argument("--minutes", type=float, default=5.0, help="minutes measured")
    demo.add_argument("--interval", type=float, default=60.0, help="snapshot interval, s")
    demo.add_argument("--jitter", type=float, default=None,
                      help="SESSIONKEEPER_SNAPSHOT_JITTER (default: the setting's default)")
    demo.add_argument("--settle", type=float, default=30.0,
                      help="seconds between the last login and the window")
    demo.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    vault = parser.add_argument_group("vault")
    sim = VaultPlan()
    vault.add_argument("--vault-sessions", type=int, default=sim.sessions)
    vault.add_argument("--processes", type=int, default=sim.processes, help="writers at once")
    vault.add_argument("--hours", type=float, default=sim.hours, help="simulated hours")
    vault.add_argument("--snapshot-minutes", type=float, default=sim.snapshot_minutes,
                       help="simulated minutes between snapshots")
    vault.add_argument("--message-bytes", type=int, default=sim.message_bytes,
                       help="bytes of one message record (the demo page's: 300 characters "
                       "of text and 256 random bytes)")
    vault.add_argument("--profile-mb", type=float, default=sim.profile_mb,
                       help="each profile's size")
    vault.add_argument("--keep", type=int, default=sim.keep,
                       help="SESSIONKEEPER_KEEP_GENERATIONS")
    vault.add_argument("--lease-renewals", type=int, default=sim.lease_renewals,
                       help="renewals of every session's lease, measured after the hours")
    vault.add_argument("--progress-every", type=float, default=30.0, help="seconds")
    plan = parser.add_argument_group("projection (assumptions)")
    defaults = FleetPlan()
    plan.add_argument("--target-sessions", type=int, default=defaults.target_sessions)
    plan.add_argument("--replica-mb", type=int, default=defaults.replica_mb)
    plan.add_argument("--replica-vcpus", type=float, default=defaults.replica_vcpus)
    plan.add_argument("--db-vcpus", type=float, default=defaults.db_vcpus)
    plan.add_argument("--db-max-connections", type=int, default=defaults.db_max_connections)
    plan.add_argument("--disk-write-mb-s", type=float, default=defaults.disk_write_mb_s)
    plan.add_argument("--db-disk-gb", type=float, default=defaults.db_disk_gb)
    parser.add_argument("--database-url", default=None,
                        help="a server to use instead of the private embedded one (its WAL "
                        "and CPU then include whatever else runs there: not reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fleet-bench")
    parser.add_argument("--work", type=Path, default=ROOT / ".sessionkeeper" / "fleet-work",
                        help="where the profiles live during the run (removed after)")
    parser.add_argument("--readme", action="store_true",
                        help="then rewrite the README's fleet-bench block from results.md")
    parser.add_argument("--readme-path", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    positive = {"--sessions": args.sessions, "--minutes": args.minutes,
                "--vault-sessions": args.vault_sessions, "--processes": args.processes,
                "--hours": args.hours, "--snapshot-minutes": args.snapshot_minutes,
                "--message-bytes": args.message_bytes, "--profile-mb": args.profile_mb,
                "--keep": args.keep, "--target-sessions": args.target_sessions}
    for flag, value in positive.items():
        if not value > 0:
            parser.error(f"{flag} must be > 0")
    if args.interval < 30:
        parser.error("--interval must be >= 30 (SESSIONKEEPER_SNAPSHOT_INTERVAL's minimum)")
    return args


def fleet_plan(args: argparse.Namespace) -> FleetPlan:
    return FleetPlan(target_sessions=args.target_sessions, replica_mb=args.replica_mb,
                     replica_vcpus=args.replica_vcpus, db_vcpus=args.db_vcpus,
                     db_max_connections=args.db_max_connections,
                     disk_write_mb_s=args.disk_write_mb_s, db_disk_gb=args.db_disk_gb)


def own_server(path: Path) -> str:
    """This bench's private embedded PostgreSQL, with the server's defaults; its URL."""
    import pgserver

    server = pgserver.get_server(str(path), cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri())


async def server_facts(url: str) -> tuple[dict[str, str], int | None]:
    """The server's settings that matter here, and the pid of its postmaster (None when the
    server's processes are not this machine's)."""
    conn = await asyncpg.connect(url)
    try:
        facts = {name: str(await conn.fetchval(f"SHOW {name}")) for name in POSTGRES_SETTINGS}
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        try:
            postmaster: int | None = psutil.Process(backend).ppid()
        except psutil.Error:
            postmaster = None
    finally:
        await conn.close()
    return facts, postmaster


def machine() -> str:
    gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**30
    return (f"{platform.machine()}, {os.cpu_count()} cores, {gib} GiB, "
            f"Python {platform.python_version()}")


def run_part(part: str, args: argparse.Namespace, server: str, postmaster: int | None,
             postgres: str) -> dict[str, Any]:
    """One part, with what it ran on."""
    from scripts.fleet_demo import run_demo
    from scripts.fleet_vault import run_vault

    args.work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    result = (run_demo if part == "demo" else run_vault)(args, server, postmaster, args.work)
    result.update(command=f"scripts/bench-fleet {' '.join(sys.argv[1:])}".strip(),
                  date=time.strftime("%Y-%m-%d"), machine=machine(), postgres=postgres,
                  load_average=[load_before, os.getloadavg()[0]],
                  total_s=round(time.monotonic() - started, 1))
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results_path = args.out / "results.json"
    results: dict[str, Any] = (json.loads(results_path.read_text())
                               if results_path.exists() else {})
    if args.part != "readme":
        if args.database_url:
            server, postmaster = args.database_url, None
            facts, _ = asyncio.run(server_facts(server))
            postgres = f"given server, {facts}"
        else:
            server = own_server(ROOT / ".sessionkeeper" / "fleet-pg")
            facts, pid = asyncio.run(server_facts(server))
            postmaster = pid
            postgres = ("private embedded (pgserver) " + ", ".join(
                f"{k} {v}" for k, v in facts.items()))
        for part in ("demo", "vault") if args.part == "all" else (args.part,):
            print(f"bench-fleet: {part}", file=sys.stderr, flush=True)
            results[part] = run_part(part, args, server, postmaster, postgres)
        results["projection"] = projection(results, fleet_plan(args))
        args.out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1))
        (args.out / "results.md").write_text(markdown(results))
        print(markdown(results))
    if args.readme or args.part == "readme":
        try:
            block = (args.out / "results.md").read_text()
            text = replace_block(args.readme_path.read_text(), block)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"bench-fleet: {args.readme_path}: {exc}") from None
        args.readme_path.write_text(text)
        print(f"bench-fleet: {args.readme_path} updated from {args.out / 'results.md'}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
