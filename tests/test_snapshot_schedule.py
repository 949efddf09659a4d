"""Periodic snapshots are jittered (SESSIONKEEPER_SNAPSHOT_JITTER): sessions started together
do not snapshot together."""

from __future__ import annotations

import random
import statistics
from typing import Any

import anyio
import pytest

from app.session import SessionRunner
from app.settings import load_settings
from app.snapshot_schedule import next_wait

INTERVAL = 300.0
REAL_SLEEP = anyio.sleep


def draws(jitter: float, first: bool, n: int = 2000, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [next_wait(INTERVAL, jitter, first=first, rng=rng) for _ in range(n)]


def test_no_jitter_is_exactly_the_interval() -> None:
    assert set(draws(0.0, first=True, n=50)) == {INTERVAL}
    assert set(draws(0.0, first=False, n=50)) == {INTERVAL}


@pytest.mark.parametrize("jitter", [0.1, 0.5])
def test_later_waits_stay_within_the_jitter_and_spread_over_it(jitter: float) -> None:
    waits = draws(jitter, first=False)
    low, high = INTERVAL * (1 - jitter), INTERVAL * (1 + jitter)
    assert all(low <= w <= high for w in waits)
    # Uniform over the whole band: both ends reached, centred on the interval.
    width = high - low
    assert min(waits) < low + width * 0.02 and max(waits) > high - width * 0.02
    assert abs(statistics.mean(waits) - INTERVAL) < width * 0.05


@pytest.mark.parametrize("jitter", [0.01, 0.1, 0.5])
def test_the_first_wait_spreads_the_phase_over_half_an_interval(jitter: float) -> None:
    waits = draws(jitter, first=True)
    assert all(INTERVAL / 2 <= w <= INTERVAL for w in waits)
    # Whatever the jitter: 20 sessions started together land in different 5 s slots.
    slots = [int(w // 5) for w in waits[:20]]
    assert max(slots.count(s) for s in slots) <= 3
    assert min(waits) < INTERVAL * 0.52 and max(waits) > INTERVAL * 0.98


class StopLoop(Exception):
    """Ends the snapshot loop under test."""


def loop_waits(monkeypatch: pytest.MonkeyPatch, jitter: str, waits: int) -> list[float]:
    """The waits a real SessionRunner's snapshot loop asks for, with its sleeps and snapshots
    replaced by recorders (test doubles: no browser, no database)."""
    monkeypatch.setenv("SESSIONKEEPER_SNAPSHOT_JITTER", jitter)
    settings = load_settings(snapshot_interval=INTERVAL)
    runner = SessionRunner(settings, driver=None, started=0.0)  # type: ignore[arg-type]
    asked: list[float] = []

    async def recording_sleep(delay: float) -> None:
        asked.append(delay)
        if len(asked) > waits:
            raise StopLoop
        await REAL_SLEEP(0)

    async def recording_snapshot(kind: str) -> Any:
        assert kind == "periodic"

    monkeypatch.setattr("app.session.anyio.sleep", recording_sleep)
    monkeypatch.setattr(runner, "snapshot", recording_snapshot)
    with pytest.raises(StopLoop):
        anyio.run(runner.snapshot_loop)
    return asked[:waits]


def test_the_session_loop_waits_as_the_setting_says(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = loop_waits(monkeypatch, "0", 5)
    assert exact == [INTERVAL] * 5
    jittered = loop_waits(monkeypatch, "0.2", 20)
    assert INTERVAL / 2 <= jittered[0] <= INTERVAL
    assert all(INTERVAL * 0.8 <= w <= INTERVAL * 1.2 for w in jittered[1:])
    assert len(set(jittered)) == 20  # drawn each time, not the interval
    # Two sessions (or replicas) started together: different phases.
    assert loop_waits(monkeypatch, "0.2", 1) != loop_waits(monkeypatch, "0.2", 1)
