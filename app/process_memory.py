"""The memory of a process tree, as a platform bills it: a Chromium is a dozen processes
(browser, zygotes, GPU, network service, renderers), and its cost is their sum.

RSS counts a page shared by several processes in each of them, so its sum overstates; PSS
(proportional set size, from /proc/PID/smaps_rollup) splits each shared page among its
sharers, and its sum is close to what the container's memory cgroup charges. Both are given:
RSS is cheap and everywhere, PSS needs Linux and read access to the processes (ours).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]  # no types-psutil in the lock

from app.browser_processes import group_members


@dataclass(frozen=True, slots=True)
class TreeMemory:
    """Sums over a process and everything below it (or in its process group)."""

    processes: int
    rss_bytes: int
    pss_bytes: int | None  # None where some process's PSS could not be read


def tree(root: int) -> list[psutil.Process]:
    """root, its descendants, and the members of its process group that were reparented
    (Chromium's crashpad handler double-forks away from its parent)."""
    try:
        top = psutil.Process(root)
        found = {p.pid: p for p in [top, *top.children(recursive=True)]}
    except psutil.Error:
        return []
    for pid in group_members(root):  # live ones: a zombie holds no memory
        if pid not in found:
            with contextlib.suppress(psutil.Error):
                found[pid] = psutil.Process(pid)
    return list(found.values())


def tree_memory(root: int) -> TreeMemory | None:
    """The summed RSS (and PSS) of root's tree; None once root is gone."""
    processes = tree(root)
    if not processes:
        return None
    rss = 0
    pss: int | None = 0
    counted = 0
    for proc in processes:
        try:
            rss += proc.memory_info().rss
            counted += 1
        except psutil.Error:  # it exited meanwhile
            continue
        if pss is not None:
            try:
                pss += proc.memory_full_info().pss
            except (psutil.Error, AttributeError):
                pss = None
    return TreeMemory(counted, rss, pss)
