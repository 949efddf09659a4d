"""Prometheus metrics of one process, in a registry of its own (several runners, one process).

Counters and histograms are fed as things happen (a snapshot, a restore, a hand-over, an error
logged by a session); the gauges (login state, lease held, generations kept) are set from the
sessions' facts each time /metrics is scraped, so they never go stale. Memory, what Railway
and Render bill for: the process collector's `process_*` series (this Python process alone)
and, per session, the summed RSS and PSS of its Chromium's process tree, read at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.status import STATES, SessionFacts
from app.vault.save import SaveResult

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# session_id -> the pid of its Chromium's main process, for the sessions whose browser runs.
BrowserPids = Callable[[], Mapping[str, int]]


class BrowserMemory(Collector):
    """sessionkeeper_browser_{resident,proportional}_memory_bytes and _processes, per
    session, summed over each Chromium's process tree when scraped (app/process_memory.py)."""

    def __init__(self, pids: BrowserPids) -> None:
        self.pids = pids

    def collect(self) -> Iterator[Metric]:
        # psutil when /metrics is scraped, not at boot (tests/test_boot_imports.py).
        from app.process_memory import tree_memory  # noqa: PLC0415

        rss = GaugeMetricFamily(
            "sessionkeeper_browser_resident_memory_bytes", "Summed RSS of the session's "
            "Chromium processes (shared pages counted in each).", labels=["session"])
        pss = GaugeMetricFamily(
            "sessionkeeper_browser_proportional_memory_bytes", "Summed PSS of the session's "
            "Chromium processes (shared pages split among them): near what the container is "
            "charged.", labels=["session"])
        count = GaugeMetricFamily(
            "sessionkeeper_browser_processes", "Processes of the session's Chromium.",
            labels=["session"])
        for session, pid in sorted(self.pids().items()):
            memory = tree_memory(pid)
            if memory is None:
                continue
            rss.add_metric([session], memory.rss_bytes)
            count.add_metric([session], memory.processes)
            if memory.pss_bytes is not None:
                pss.add_metric([session], memory.pss_bytes)
        yield from (rss, pss, count)


class Metrics:
    """The sessionkeeper_* metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, _cpu_seconds_total, ...
        self.snapshot_duration = Histogram(
            "sessionkeeper_snapshot_duration_seconds", "Time to take a snapshot that committed "
            "a generation.", ["session"], buckets=_SECONDS, registry=r)
        self.bytes_uploaded = Counter(
            "sessionkeeper_snapshot_bytes_uploaded", "Compressed bytes uploaded by snapshots.",
            ["session"], registry=r)
        self.chunks = Counter(
            "sessionkeeper_snapshot_chunks", "Chunks of committed snapshots, new (uploaded) or "
            "reused (already stored).", ["session", "result"], registry=r)
        self.restore_duration = Histogram(
            "sessionkeeper_restore_duration_seconds", "Time to restore a generation into the "
            "profile.", ["session"], buckets=_SECONDS, registry=r)
        self.generations_kept = Gauge(
            "sessionkeeper_generations_kept", "Generations stored for the session.",
            ["session"], registry=r)
        self.login_state = Gauge(
            "sessionkeeper_login_state", "1 for the state the session is in, 0 for the others.",
            ["session", "state"], registry=r)
        self.lease_held = Gauge(
            "sessionkeeper_lease_held", "1 while this process holds the session's lease.",
            ["session"], registry=r)
        self.handover_duration = Histogram(
            "sessionkeeper_handover_duration_seconds", "From the previous owner's SIGTERM to "
            "ready here (database clock).", ["session"], buckets=_SECONDS, registry=r)
        self.errors = Counter(
            "sessionkeeper_errors", "Warning and error events, by event name.", ["kind"],
            registry=r)

    def watch_browsers(self, pids: BrowserPids) -> None:
        """Report the memory of these sessions' browsers at each scrape."""
        self.registry.register(BrowserMemory(pids))

    def snapshot_committed(self, result: SaveResult) -> None:
        """Count a snapshot; an unchanged profile (no generation) is not one."""
        if not result.changed:
            return
        session = result.session_id
        self.snapshot_duration.labels(session).observe(result.duration_ms / 1000)
        self.bytes_uploaded.labels(session).inc(result.bytes_uploaded)
        self.chunks.labels(session, "new").inc(result.chunks_new)
        self.chunks.labels(session, "reused").inc(result.chunks_reused)

    def restored(self, session: str, duration_ms: int) -> None:
        """Count a restore."""
        self.restore_duration.labels(session).observe(duration_ms / 1000)

    def handover(self, session: str, seconds: float) -> None:
        """Count a hand-over that ended in ready here."""
        self.handover_duration.labels(session).observe(seconds)

    def error(self, kind: str) -> None:
        """Count one warning or error event."""
        self.errors.labels(kind).inc()

    def refresh(self, sessions: Iterable[SessionFacts]) -> None:
        """Set the gauges from the sessions this process runs now (dropping ended ones)."""
        for gauge in (self.generations_kept, self.login_state, self.lease_held):
            gauge.clear()
        for facts in sessions:
            if not facts.run_here:
                continue
            for state in STATES:
                self.login_state.labels(facts.session_id, state).set(
                    1 if state == facts.state else 0)
            self.lease_held.labels(facts.session_id).set(1 if facts.lease_held else 0)
            if facts.generations_kept is not None:
                self.generations_kept.labels(facts.session_id).set(facts.generations_kept)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)

