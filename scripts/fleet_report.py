"""scripts/bench-fleet's results in words: the projection to a larger fleet (computed from the
measured figures and stated assumptions), results.md, and the README block made from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scripts import readme_block

README_BLOCK = "fleet-bench"
README_START, README_END = readme_block.markers(README_BLOCK)
MB = 1024 * 1024
GB = 1024 * MB


@dataclass(frozen=True)
class FleetPlan:
    """What the projection assumes: the fleet, a replica, the database server."""

    target_sessions: int = 10_000
    snapshot_interval_s: float = 300.0  # SESSIONKEEPER_SNAPSHOT_INTERVAL's default
    lease_ttl_s: float = 30.0  # SESSIONKEEPER_LEASE_TTL's default: renewed every third
    replica_mb: int = 8192
    replica_vcpus: float = 2.0
    replica_usable: float = 0.8  # of a replica's memory and CPU, what sessions may use
    db_vcpus: float = 4.0
    db_max_connections: int = 500
    disk_write_mb_s: float = 125.0
    db_disk_gb: float = 1000.0


def replica_capacity(per_session_mb: float, per_session_cores: float,
                     plan: FleetPlan) -> dict[str, Any]:
    """Sessions one replica holds, bounded by memory or by CPU, whichever is tighter."""
    by_memory = math.floor(plan.replica_mb * plan.replica_usable / per_session_mb)
    by_cpu = (math.floor(plan.replica_vcpus * plan.replica_usable / per_session_cores)
              if per_session_cores > 0 else by_memory)
    sessions = max(1, min(by_memory, by_cpu))
    return {"sessions_per_replica": sessions, "by_memory": by_memory, "by_cpu": by_cpu,
            "bound_by": "memory" if by_memory <= by_cpu else "CPU",
            "replicas": math.ceil(plan.target_sessions / sessions)}


def projection(results: dict[str, Any], plan: FleetPlan) -> dict[str, Any]:
    """The fleet of plan.target_sessions, from the measured figures: PostgreSQL's size, WAL,
    CPU and connections, the replicas, and which of them meets its budget first."""
    n = plan.target_sessions
    vault, demo = results.get("vault"), results.get("demo")
    out: dict[str, Any] = {"plan": asdict(plan)}
    snapshots_per_s = n / plan.snapshot_interval_s
    renewals_per_s = n * 3 / plan.lease_ttl_s
    out["snapshots_per_s"] = round(snapshots_per_s, 1)
    out["lease_renewals_per_s"] = round(renewals_per_s, 1)
    rows: list[dict[str, Any]] = []

    def row(resource: str, needed: float | None, budget: float | None, unit: str,
            basis: str) -> None:
        rows.append({"resource": resource, "needed": needed, "budget": budget, "unit": unit,
                     "use": (needed / budget if needed is not None and budget else None),
                     "basis": basis})

    if vault:
        sessions = vault["plan"]["sessions"]
        tables = vault["sizes"]["tables"]
        stored = sum(t["total"] for t in tables.values())
        out["db_bytes"] = stored / sessions * n
        # WAL of the simulated snapshots, rescaled to the plan's interval.
        scale = vault["plan"]["snapshot_minutes"] * 60 / plan.snapshot_interval_s
        snap_wal_h = vault["steady"]["wal_bytes_per_session_sim_hour"] * n * scale
        lease_wal_h = (vault["leases"]["wal_bytes_per_renewal"] or 0) * renewals_per_s * 3600
        out["wal_bytes_per_hour"] = {"snapshots": snap_wal_h, "leases": lease_wal_h,
                                     "total": snap_wal_h + lease_wal_h}
        cpu_snap = vault["steady"]["server_cpu_ms_per_snapshot"]
        cpu_lease = vault["leases"]["server_cpu_ms_per_renewal"]
        db_cores = (None if cpu_snap is None or cpu_lease is None else
                    (snapshots_per_s * cpu_snap + renewals_per_s * cpu_lease) / 1000)
        out["db_cores"] = db_cores
        row("PostgreSQL storage", out["db_bytes"] / GB, plan.db_disk_gb, "GB",
            f"tables and indexes per session after {vault['plan']['hours']:g} h "
            f"x {n:,}")
        row("WAL written", (snap_wal_h + lease_wal_h) / MB / 3600, plan.disk_write_mb_s, "MB/s",
            "snapshots' WAL per session-hour and leases' WAL per renewal, measured")
        row("PostgreSQL CPU", db_cores, plan.db_vcpus, "vCPU",
            "server CPU per snapshot and per renewal, measured on this bench's own server")
    if demo:
        per = demo["per_session"]["tree"]
        capacity = replica_capacity(per["pss_mb"], per["cpu_s_per_min"] / 60, plan)
        out["replicas"] = capacity
        connections = demo["db"]["connections_per_session"] * n
        out["db_connections"] = connections
        row("PostgreSQL connections", connections, plan.db_max_connections, "",
            f"{demo['db']['connections_per_session']:g} per session (each session's own "
            "pool), measured in the demo part")
        row("replicas", capacity["replicas"], None, "",
            f"{capacity['sessions_per_replica']} sessions each, bound by "
            f"{capacity['bound_by']}")
    out["rows"] = rows
    ranked = [r for r in rows if r["use"] is not None]
    if ranked:
        first = max(ranked, key=lambda r: r["use"])
        out["first_bottleneck"] = first["resource"]
        out["first_bottleneck_use"] = round(first["use"], 3)
    return out


# ------------------------------------------------------------------ text


def fmt_bytes(n: float | None) -> str:
    """1.5 GB, 320 kB, 12 B (binary multiples, decimal-looking names as the README uses)."""
    if n is None:
        return "n/a"
    for unit, size in (("TB", 1024 * GB), ("GB", GB), ("MB", MB), ("kB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    """A number with its unit, or n/a."""
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def demo_markdown(demo: dict[str, Any]) -> list[str]:
    per = demo["per_session"]
    snaps = demo["snapshots"]
    window, first = snaps["window"], snaps["first_round"]
    jitter = "the default" if demo["jitter"] is None else f"{demo['jitter']:g}"
    lines = [
        f"**{demo['sessions']} demo sessions in one process** (`SESSIONKEEPER_SESSION_IDS`; "
        f"each its own Chromium and Playwright driver; {demo['rate_per_min']:g} messages a "
        f"minute each; snapshots every {demo['interval_s']:g} s, jitter {jitter}; measured "
        f"over {demo['measured_s'] / 60:.1f} min, {demo['samples']} samples, medians; all "
        f"logged in {demo['all_logged_in_s']:g} s after the start; load average "
        f"{demo['load_average'][0]:.1f} to {demo['load_average'][1]:.1f}):",
        "",
        "| per session | RSS | PSS | CPU (s a minute) |",
        "|---|---|---|---|",
    ]
    names = {"daemon": "the daemon (Python, the process alone)", "driver": "Playwright's driver",
             "chromium": "Chromium (all its processes)", "tree": "the whole tree"}
    for kind, label in names.items():
        p = per[kind]
        lines.append(f"| {label} | {p['rss_mb']:.1f} MB | {p['pss_mb']:.1f} MB "
                     f"| {p['cpu_s_per_min']:.2f} |")
    db = demo["db"]
    lines += [
        "",
        f"Processes: {demo['processes']['chromium']} of Chromium, "
        f"{demo['processes']['driver']} drivers. The whole tree's resident pages counted once: "
        f"{fmt(demo['tree_unique_mb'], 0, ' MB')} (peak PSS {demo['peak_tree_pss_mb']:.0f} MB). "
        f"Snapshot starts: of the first periodic snapshot of each session, at most "
        f"{first['max_within_bucket']} began within the same {first['bucket_s']:g} s; during "
        f"the window {window['starts']} periodic snapshots, at most "
        f"{window['max_within_bucket']} within {window['bucket_s']:g} s (an even spread: "
        f"{window['even_spread_per_bucket']:g}); median duration "
        f"{fmt(snaps['median_duration_ms'], 0, ' ms')}, {snaps['failed']} failed. PostgreSQL: "
        f"connections per session {db['connections_per_session']:g}, "
        f"{fmt_bytes(db['wal_bytes_per_session_hour'])} of WAL per session-hour, "
        f"{db['commits_per_session_min']:g} transactions per session-minute (reads "
        f"included), server CPU {fmt(db['server_cpu_s_per_session_min'], 3)} s per "
        f"session-minute. SIGTERM to exit {demo['sigterm_to_exit_s']:g} s (exit code "
        f"{demo['exit_code']}). Warnings and errors logged: "
        + (", ".join(f"`{k}` x{v}" for k, v in sorted(demo["warnings"].items())) or "none")
        + ".",
    ]
    return lines


def vault_markdown(vault: dict[str, Any]) -> list[str]:
    plan, steady, first = vault["plan"], vault["steady"], vault["first"]
    tables, leases = vault["sizes"]["tables"], vault["leases"]
    sessions = plan["sessions"]

    def ms(d: dict[str, float | None]) -> str:
        return " / ".join(fmt(d[k], 0) for k in ("p50", "p95", "p99")) + " ms"

    lines = [
        f"**The vault alone** ({sessions:,} sessions of profile-shaped trees of about "
        f"{plan['profile_mb']:g} MB ({fmt_bytes(first['bytes_raw_p50'])} kept, "
        f"{fmt_bytes(steady['bytes_raw_at_end_p50'])} at the end), {plan['hours']:g} h "
        f"simulated: {plan['messages_per_tick']} messages of {plan['message_bytes']} B and a "
        f"snapshot every {plan['snapshot_minutes']:g} min each, {plan['processes']} processes "
        f"writing at once into one PostgreSQL; real time: load {vault['real_s']['load']:.0f} s, "
        f"steady {vault['real_s']['steady']:.0f} s; load average "
        f"{vault['load_average'][0]:.1f} to {vault['load_average'][1]:.1f}):",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| snapshots | {first['count']:,} first, {steady['count']:,} steady; "
        f"{vault['generations_committed']:,} generations committed of "
        f"{vault['generations_expected']:,} expected |",
        f"| snapshot latency under contention, p50 / p95 / p99 (`duration_ms`) "
        f"| {ms(steady['duration_ms'])} |",
        f"| the same with prune and GC (`save_snapshot` returns) | {ms(steady['wall_ms'])} |",
        f"| prune, garbage collection included, p50 / p95 / p99 | {ms(steady['prune_ms'])} "
        f"({steady['prune_share']:.0%} of the snapshots' time; GC alone "
        f"{steady['gc_share']:.0%}) |",
        f"| first snapshot of a profile, p50 / p95 / p99 | {ms(first['duration_ms'])} |",
        f"| throughput | {fmt(steady['snapshots_per_s'], 1)} snapshots/s |",
        f"| uploaded per snapshot, p50 / mean | {fmt_bytes(steady['bytes_uploaded_p50'])} / "
        f"{fmt_bytes(steady['bytes_uploaded_mean'])} |",
        f"| WAL per simulated hour | {fmt_bytes(steady['wal_bytes_per_sim_hour'])} "
        f"({fmt_bytes(steady['wal_bytes_per_session_sim_hour'])} per session-hour; "
        f"{fmt_bytes(steady['wal_bytes_per_snapshot'])} and "
        f"{fmt(steady['wal_fpi_per_snapshot'], 1)} full-page images per snapshot) |",
        f"| WAL per real hour (at this machine's pace) "
        f"| {fmt_bytes(steady['wal_bytes_per_real_hour'])} |",
        f"| CPU per snapshot: the writer / PostgreSQL | {fmt(steady['client_cpu_ms_p50'], 0)} ms"
        f" / {fmt(steady['server_cpu_ms_per_snapshot'], 0, ' ms')} |",
        f"| lease renewal: latency p50 / p99, WAL, server CPU "
        f"| {fmt(leases['ms']['p50'], 1)} / {fmt(leases['ms']['p99'], 1)} ms, "
        f"{fmt_bytes(leases['wal_bytes_per_renewal'])}, "
        f"{fmt(leases['server_cpu_ms_per_renewal'], 2, ' ms')} |",
    ]
    for name in ("chunks", "snapshots"):
        t = tables.get(name)
        if t:
            lines.append(
                f"| `{name}` at the end: table / TOAST / indexes "
                f"| {fmt_bytes(t['heap'])} / {fmt_bytes(t['toast'])} / {fmt_bytes(t['indexes'])}"
                f" ({fmt_bytes(t['total'] / sessions)} per session; {t['live_rows']:,} rows, "
                f"{t['dead_rows']:,} dead, {t['autovacuums']} autovacuums) |")
    gc = vault["gc_pass"]
    lines += [
        f"| disk at the end, per session: the profile / the database "
        f"| {fmt_bytes(vault['profile_bytes_at_end'])} / "
        f"{fmt_bytes(vault['sizes']['database_bytes'] / sessions)} |",
        f"| a garbage-collection pass over every session | {gc['seconds']:g} s "
        f"({gc['ms_per_session']:g} ms a session), {gc['chunks_deleted']} chunks deleted, "
        f"{gc['deferred']} deferred |",
    ]
    return lines


def projection_markdown(proj: dict[str, Any]) -> list[str]:
    plan = proj["plan"]
    n = plan["target_sessions"]
    lines = [
        f"**Projection for {n:,} sessions** (computed by the bench from the figures above; "
        f"assumed: snapshots every {plan['snapshot_interval_s']:g} s, leases of "
        f"{plan['lease_ttl_s']:g} s renewed every third, replicas of "
        f"{plan['replica_mb'] / 1024:g} GB and {plan['replica_vcpus']:g} vCPU of which "
        f"{plan['replica_usable']:.0%} for sessions, a PostgreSQL server of "
        f"{plan['db_vcpus']:g} vCPU, {plan['db_max_connections']} connections (PostgreSQL's "
        f"default is 100), {plan['disk_write_mb_s']:g} MB/s of disk writes and "
        f"{plan['db_disk_gb']:g} GB): {proj['snapshots_per_s']:g} snapshots and "
        f"{proj['lease_renewals_per_s']:g} lease renewals a second.",
        "",
        "| resource | needed | budget | use | from |",
        "|---|---|---|---|---|",
    ]
    for r in proj["rows"]:
        digits = 1 if r["needed"] is not None and r["needed"] < 100 else 0
        unit = f" {r['unit']}" if r["unit"] else ""
        lines.append(f"| {r['resource']} | {fmt(r['needed'], digits)}"
                     f"{unit if r['needed'] is not None else ''} "
                     f"| {fmt(r['budget'], 0)}{unit if r['budget'] else ''} "
                     f"| {fmt(None if r['use'] is None else r['use'] * 100, 0, ' %')} "
                     f"| {r['basis']} |")
    wal = proj.get("wal_bytes_per_hour")
    if wal:
        lines += ["", f"WAL per hour: {fmt_bytes(wal['total'])} ({fmt_bytes(wal['snapshots'])} "
                  f"from snapshots, {fmt_bytes(wal['leases'])} from lease renewals)."]
    if "first_bottleneck" in proj:
        use = proj["first_bottleneck_use"]
        lines += ["", f"First bottleneck: **{proj['first_bottleneck']}** ({use:.0%} of its "
                  "budget)." if use >= 1 else
                  f"No budget is reached; the nearest: **{proj['first_bottleneck']}** "
                  f"({use:.0%} of its budget)."]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """results.md: what was run, on what, and the figures."""
    lines = []
    for part in ("demo", "vault"):
        if part in results:
            r = results[part]
            lines += [f"{part}: `{r['command']}` on {r['date']}; machine: {r['machine']}; "
                      f"PostgreSQL: {r['postgres']}.", ""]
    if "demo" in results:
        lines += [*demo_markdown(results["demo"]), ""]
    if "vault" in results:
        lines += [*vault_markdown(results["vault"]), ""]
    if "projection" in results:
        lines += projection_markdown(results["projection"])
    return "\n".join(lines).rstrip() + "\n"


def replace_block(text: str, block: str) -> str:
    """text with what stands between the fleet-bench markers replaced by block."""
    return readme_block.replace_block(text, README_BLOCK, block)
