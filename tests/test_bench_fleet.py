"""scripts/bench-fleet: the vault part run small against the test PostgreSQL, the demo part's
arithmetic, the projection, and the README block it rewrites."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from app.snapshot_schedule import next_wait
from scripts.bench_fleet import main as bench_fleet_main
from scripts.fleet_demo import max_within, per_session, periodic_starts, start_spread
from scripts.fleet_procs import ProcSample, cpu_by_kind, kind_of, memory_by_kind
from scripts.fleet_report import (
    README_END,
    README_START,
    FleetPlan,
    projection,
    replace_block,
    replica_capacity,
)
from scripts.fleet_vault import VaultPlan, assign

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def test_vault_part_small(pg_server_url: str, tmp_path: Path) -> None:
    """4 sessions, 1 simulated hour (12 snapshots each), 2 writers, 2 MB profiles."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_fleet.py"), "vault",
         "--vault-sessions", "4", "--processes", "2", "--hours", "1", "--profile-mb", "2",
         "--lease-renewals", "2", "--database-url", pg_server_url, "--out", str(out),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vault = json.loads((out / "results.json").read_text())["vault"]
    # Every snapshot changed something (the chat wrote), so each one is a generation.
    assert vault["first"]["count"] == 4 and vault["steady"]["count"] == 4 * 12
    assert vault["generations_committed"] == vault["generations_expected"] == 4 * 13
    sizes = vault["sizes"]
    assert sizes["generations_kept"] == 4 * 5  # prune kept --keep 5 of each
    assert vault["gc_pass"]["chunks_deleted"] == 0  # prune collected after every commit
    assert vault["leases"]["renewals"] == 4 * 2
    steady = vault["steady"]
    latency = steady["duration_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert steady["wall_ms"]["p50"] > latency["p50"]  # prune and GC come on top
    assert 0 < steady["gc_ms"]["p50"] <= steady["prune_ms"]["p50"]
    assert steady["bytes_uploaded_p50"] > 10_000 and steady["wal_bytes"] > 0
    assert steady["wal_bytes_per_sim_hour"] == steady["wal_bytes"]  # one simulated hour
    # The profiles grew by the chat: a session's last generation keeps more than its first.
    assert steady["bytes_raw_at_end_p50"] > vault["first"]["bytes_raw_p50"] > 1 * MB
    chunks = sizes["tables"]["chunks"]
    assert chunks["total"] >= chunks["heap"] + chunks["indexes"] > 0
    assert sizes["chunk_bytes_stored"] > 4 * MB
    storage = next(r for r in vault_projection(out)["rows"]
                   if r["resource"] == "PostgreSQL storage")
    stored = sum(t["total"] for t in sizes["tables"].values())
    assert storage["needed"] == pytest.approx(stored / 4 * 10_000 / 1024**3)
    text = (out / "results.md").read_text()
    assert "**The vault alone** (4 sessions" in text and "Projection for 10,000" in text


def vault_projection(out: Path) -> dict[str, object]:
    projected: dict[str, object] = json.loads((out / "results.json").read_text())["projection"]
    return projected


def test_readme_block_is_rewritten_from_results(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.count(README_START) == 1 and readme.count(README_END) == 1
    copy = tmp_path / "README.md"
    copy.write_text(readme)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    bench_fleet_main(["readme", "--out", str(out), "--readme-path", str(copy)])
    new = copy.read_text()
    head, rest = new.split(README_START)
    block, tail = rest.split(README_END)
    assert block == "\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert head == readme.split(README_START)[0] and tail == readme.split(README_END)[1]
    # Again: the same text (the block is replaced, not added to).
    bench_fleet_main(["readme", "--out", str(out), "--readme-path", str(copy)])
    assert copy.read_text() == new


def test_a_readme_without_the_markers_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fleet-bench"):
        replace_block("# no block here\n", "x")
    with pytest.raises(ValueError):
        replace_block(f"{README_END}\n{README_START}\n", "x")  # in the wrong order
    readme = tmp_path / "README.md"
    readme.write_text("nothing\n")
    (tmp_path / "results.md").write_text("x\n")
    with pytest.raises(SystemExit, match=r"bench-fleet: .*no <!-- fleet-bench:start"):
        bench_fleet_main(["readme", "--out", str(tmp_path), "--readme-path", str(readme)])
    assert readme.read_text() == "nothing\n"


def test_snapshot_starts_spread() -> None:
    assert max_within([], 5) == 0
    assert max_within([0.0, 1.0, 4.9, 5.0, 9.0], 5) == 3  # [0, 5) holds 0, 1, 4.9
    together = [100.0 + i * 0.1 for i in range(20)]
    assert start_spread(together, 60, 20, 100.0)["max_within_bucket"] == 20
    even = [100.0 + i * 3 for i in range(20)]
    spread = start_spread(even, 60, 20, 100.0)
    assert spread["max_within_bucket"] == 2
    assert spread["even_spread_per_bucket"] == pytest.approx(20 * 5 / 60, abs=0.01)
    assert spread["offsets_s"][:3] == [0.0, 3.0, 6.0]
    # Twenty sessions started together: their jittered first waits spread them.
    rng = random.Random(3)
    firsts = [next_wait(60, 0.1, first=True, rng=rng) for _ in range(20)]
    assert max_within(firsts, 5) <= 8  # over half an interval: 3.3 a 5 s on average
    assert max_within([next_wait(60, 0.0, first=True, rng=rng) for _ in range(20)], 5) == 20


def test_periodic_starts_take_the_duration_off() -> None:
    events = [
        {"event": "snapshot_committed", "kind": "periodic", "session_id": "a", "_t": 10.0,
         "duration_ms": 500},
        {"event": "snapshot_committed", "kind": "login", "session_id": "a", "_t": 5.0,
         "duration_ms": 100},
        {"event": "snapshot_unchanged", "session_id": "b", "_t": 7.0, "duration_ms": 5},
        {"event": "snapshot_committed", "kind": "periodic", "session_id": "b", "_t": 20.0,
         "duration_ms": 0},
    ]
    assert periodic_starts(events) == {"a": [9.5], "b": [20.0]}


def test_processes_are_told_apart_and_summed() -> None:
    assert kind_of(10, 10, ["/venv/bin/python", "-m", "app", "run"]) == "daemon"
    assert kind_of(11, 10, ["/pw/driver/node", "/pw/driver/package/cli.js", "run-driver"]) \
        == "driver"
    assert kind_of(12, 10, ["/usr/lib/chromium/chromium", "--headless"]) == "chromium"
    assert kind_of(13, 10, ["/usr/lib/chromium/chromium --type=renderer --lang=en"]) \
        == "chromium"
    assert kind_of(14, 10, ["/usr/bin/cat"]) == "other"
    first = {10: ProcSample("daemon", 100 * MB, 80 * MB, 5.0),
             12: ProcSample("chromium", 300 * MB, 100 * MB, 10.0),
             13: ProcSample("chromium", 200 * MB, 50 * MB, 1.0)}
    last = {10: ProcSample("daemon", 110 * MB, 90 * MB, 6.5),
            12: ProcSample("chromium", 300 * MB, 100 * MB, 13.0),
            15: ProcSample("chromium", 100 * MB, 20 * MB, 0.5)}  # 13 exited, 15 started
    cpu = cpu_by_kind(first, last)
    assert cpu["daemon"] == pytest.approx(1.5) and cpu["chromium"] == pytest.approx(3.5)
    assert cpu["tree"] == pytest.approx(5.0)
    memory = memory_by_kind(last)
    assert memory["chromium"] == {"processes": 2, "rss": 400 * MB, "pss": 120 * MB}
    assert memory["tree"]["pss"] == 210 * MB
    per = per_session(memory, cpu, sessions=2, minutes=0.5)
    assert per["chromium"] == {"rss_mb": 200.0, "pss_mb": 60.0, "cpu_s_per_min": 3.5}
    assert per["daemon"]["pss_mb"] == 45.0


def test_vault_plan_and_writers() -> None:
    plan = VaultPlan(hours=24, snapshot_minutes=5, rate=30)
    assert plan.ticks == 288 and plan.messages_per_tick == 150
    groups = assign([f"s{i}" for i in range(10)], 4)
    assert [len(g) for g in groups] == [3, 3, 2, 2]
    assert sorted(s for g in groups for s in g) == sorted(f"s{i}" for i in range(10))
    assert assign(["a"], 8) == [["a"]]  # no empty writers


def test_projection_finds_the_first_bottleneck() -> None:
    plan = FleetPlan(target_sessions=10_000, replica_mb=8192, replica_vcpus=2,
                     replica_usable=0.8, db_vcpus=4, db_max_connections=500,
                     disk_write_mb_s=125, db_disk_gb=1000)
    capacity = replica_capacity(per_session_mb=400, per_session_cores=0.05, plan=plan)
    assert capacity["by_memory"] == 16 and capacity["by_cpu"] == 32
    assert capacity["bound_by"] == "memory" and capacity["replicas"] == 625
    vault = {
        "plan": {"sessions": 100, "snapshot_minutes": 5.0, "hours": 24.0},
        "sizes": {"tables": {"chunks": {"total": 100 * 20 * MB},
                             "snapshots": {"total": 100 * MB}}},
        "steady": {"wal_bytes_per_session_sim_hour": 1 * MB, "server_cpu_ms_per_snapshot": 6.0},
        "leases": {"wal_bytes_per_renewal": 150, "server_cpu_ms_per_renewal": 0.5},
    }
    demo = {"per_session": {"tree": {"pss_mb": 400, "cpu_s_per_min": 3.0}},
            "db": {"connections_per_session": 1.0}}
    proj = projection({"vault": vault}, plan)
    rows = {r["resource"]: r for r in proj["rows"]}
    assert rows["PostgreSQL storage"]["needed"] == pytest.approx(10_000 * 21 / 1024)
    assert proj["wal_bytes_per_hour"]["snapshots"] == 10_000 * MB
    assert proj["wal_bytes_per_hour"]["leases"] == 150 * 1000 * 3600
    assert rows["PostgreSQL CPU"]["needed"] == pytest.approx((10_000 / 300 * 6 + 1000 * 0.5)
                                                             / 1000)
    assert proj["first_bottleneck"] == "PostgreSQL storage"  # 205 GB of 1000: the nearest
    proj = projection({"vault": vault, "demo": demo}, plan)
    assert proj["first_bottleneck"] == "PostgreSQL connections"
    assert proj["first_bottleneck_use"] == 20.0 and proj["replicas"]["replicas"] == 625
