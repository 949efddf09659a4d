"""Memory in /metrics, what the platforms bill for: the process collector's series for the
daemon and the summed memory of each session's Chromium process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from app.metrics import Metrics
from app.process_memory import tree, tree_memory
from tests.support.daemon import DAEMON_SESSION, Daemon, login, metric_samples

MB = 1024 * 1024


@pytest.fixture
def family() -> Iterator[subprocess.Popen[bytes]]:
    """A process with a child and a grandchild, each holding some memory of its own."""
    grandchild = "import time; x = bytearray(20_000_000); time.sleep(60)"
    child = (f"import subprocess, sys, time; x = bytearray(20_000_000); "
             f"subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(60)")
    root = subprocess.Popen([sys.executable, "-c",
                             "import subprocess, sys, time; x = bytearray(20_000_000); "
                             f"subprocess.Popen([sys.executable, '-c', {child!r}]); "
                             "time.sleep(60)"], start_new_session=True)
    yield root
    os.killpg(root.pid, signal.SIGKILL)
    root.wait()


def _settled(pid: int, processes: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        memory = tree_memory(pid)
        if memory is not None and memory.processes >= processes and memory.rss_bytes > 60 * MB:
            return
        time.sleep(0.05)


def test_tree_memory_sums_the_tree(family: subprocess.Popen[bytes]) -> None:
    _settled(family.pid, 3)
    memory = tree_memory(family.pid)
    assert memory is not None and memory.processes == 3
    assert memory.rss_bytes > 60 * MB  # three processes of 20 MB and an interpreter each
    assert memory.pss_bytes is not None and 60 * MB < memory.pss_bytes <= memory.rss_bytes


def test_unique_resident_memory_counts_shared_pages_once(
        family: subprocess.Popen[bytes]) -> None:
    """scripts/session-memory's figure: three interpreters share their libraries' pages, so
    the tree's pages counted once are fewer than its RSS summed, and more than its own data."""
    from scripts.session_memory import unique_resident_mb

    _settled(family.pid, 3)
    unique = unique_resident_mb([p.pid for p in tree(family.pid)])
    if unique is None:
        pytest.skip("physical frame numbers in /proc/PID/pagemap need root")
    memory = tree_memory(family.pid)
    assert memory is not None
    assert 60 < unique < memory.rss_bytes / MB


def test_tree_memory_of_a_gone_process_is_none() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert tree_memory(proc.pid) is None


def test_metrics_expose_process_and_browser_series(family: subprocess.Popen[bytes]) -> None:
    _settled(family.pid, 3)
    metrics = Metrics()
    metrics.watch_browsers(lambda: {"s1": family.pid})
    samples = metric_samples(metrics.exposition().decode())
    assert samples[("process_resident_memory_bytes", ())] > 10 * MB
    assert samples[("process_open_fds", ())] > 0
    rss = samples[("sessionkeeper_browser_resident_memory_bytes", (("session", "s1"),))]
    pss = samples[("sessionkeeper_browser_proportional_memory_bytes", (("session", "s1"),))]
    assert rss > 60 * MB and 0 < pss <= rss
    assert samples[("sessionkeeper_browser_processes", (("session", "s1"),))] == 3


def test_a_daemons_metrics_give_its_chromiums_memory(start: Callable[..., Daemon],
                                                      daemon_env: dict[str, str]) -> None:
    daemon = start()
    login(daemon, int(daemon_env["SESSIONKEEPER_DEMO_PORT"]))
    label = (("session", DAEMON_SESSION),)
    # The login checkpoint closes the browser for its snapshot and starts it again: no
    # series while it is down.
    deadline = time.monotonic() + 30
    while ("sessionkeeper_browser_processes", label) not in (samples := daemon.metrics()):
        assert time.monotonic() < deadline, "no browser memory in /metrics"
        time.sleep(0.2)
    own = samples[("process_resident_memory_bytes", ())]
    rss = samples[("sessionkeeper_browser_resident_memory_bytes", label)]
    pss = samples[("sessionkeeper_browser_proportional_memory_bytes", label)]
    processes = samples[("sessionkeeper_browser_processes", label)]
    # A Python daemon is tens of MB; a Chromium showing a page is several processes and
    # 100 MB or more, and less than a few GB.
    assert 20 * MB < own < 1024 * MB
    assert processes >= 3
    assert 100 * MB < rss < 8192 * MB and 50 * MB < pss <= rss
    daemon.stop_cleanly()
