"""Processes of scripts/bench-fleet, sampled: what each is (the daemon, Playwright's driver,
Chromium), its memory (RSS and PSS) and the CPU time it and its reaped children used.

CPU of a process tree over a window: for every process, user + system time plus the time of
the children it has reaped (a renderer that exited is counted in its parent from then on), so
a sum over the live tree never counts one process twice.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from app.process_memory import tree  # noqa: E402

KINDS = ("daemon", "driver", "chromium", "other")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One process at one moment."""

    kind: str
    rss: int
    pss: int | None
    cpu_s: float


def kind_of(pid: int, root: int, cmdline: list[str]) -> str:
    """What a process of the daemon's tree is: the daemon itself (root), Playwright's Node.js
    driver, a Chromium process (zygote children rewrite their command line into one string,
    hence the substring test), or anything else."""
    if pid == root:
        return "daemon"
    first = cmdline[0] if cmdline else ""
    if "chrom" in first.lower():
        return "chromium"
    if Path(first.split(" ")[0]).name == "node" or "run-driver" in cmdline:
        return "driver"
    return "other"


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU seconds a process used, its reaped children's included."""
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds of root and every live process below it (reaped ones through their
    parents); None when root is gone."""
    total = 0.0
    procs = tree(root)
    if not procs:
        return None
    for proc in procs:
        try:
            total += cpu_seconds(proc)
        except psutil.Error:
            continue  # it exited meanwhile: counted in its parent once reaped
    return total


def sample_tree(root: int, *, with_pss: bool = True) -> dict[int, ProcSample]:
    """Every process of root's tree, by pid."""
    out: dict[int, ProcSample] = {}
    for proc in tree(root):
        try:
            kind = kind_of(proc.pid, root, proc.cmdline())
            if with_pss:
                mem = proc.memory_full_info()
                rss, pss = int(mem.rss), int(getattr(mem, "pss", 0)) or None
            else:
                rss, pss = int(proc.memory_info().rss), None
            out[proc.pid] = ProcSample(kind, rss, pss, cpu_seconds(proc))
        except psutil.Error:
            continue
    return out


def memory_by_kind(sample: dict[int, ProcSample]) -> dict[str, dict[str, float]]:
    """Summed RSS and PSS (bytes) and process count per kind, and for the whole tree."""
    out: dict[str, dict[str, float]] = {}
    for kind in (*KINDS, "tree"):
        members = [p for p in sample.values() if kind in ("tree", p.kind)]
        out[kind] = {"processes": len(members), "rss": sum(p.rss for p in members),
                     "pss": sum(p.pss or 0 for p in members)}
    return out


def cpu_by_kind(first: dict[int, ProcSample],
                last: dict[int, ProcSample]) -> dict[str, float]:
    """CPU seconds used between two samples of one tree, per kind and for the whole tree: a
    process seen only in the last one counts from zero (it started in between)."""
    out = dict.fromkeys((*KINDS, "tree"), 0.0)
    for pid, proc in last.items():
        before = first.get(pid)
        used = proc.cpu_s - (before.cpu_s if before is not None else 0.0)
        out[proc.kind] += used
        out["tree"] += used
    return out
