"""scripts/chaos in small: each fault against the real daemon, a real Chromium on the demo site
and a PostgreSQL cluster of this module's own (tests/support/chaos.py has the scenarios).

Slow (minutes each): out of the default run; `scripts/test -m slow -k chaos` runs them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chaos import Chaos, ScenarioResult, run_scenario
from tests.support.pgcluster import PgCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chaos]:
    # The cluster lives in a folder of its own under /tmp: as root it runs as `postgres`,
    # which cannot enter pytest's private temporary folders.
    cluster = PgCluster()
    bench = Chaos(cluster, tmp_path_factory.mktemp("chaos"))
    yield bench
    bench.cleanup()
    cluster.close()


def judge(result: ScenarioResult) -> ScenarioResult:
    """Print the figures; skip with the scenario's reason; fail with every failure."""
    print(json.dumps({k: v for k, v in result.figures.items() if k != "records"},
                     indent=1, default=str))
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.passed, "\n".join(result.failures)
    return result


@pytest.mark.timeout(1500)
def test_kill_9_during_snapshots_leaves_a_restorable_generation(chaos: Chaos) -> None:
    result = judge(run_scenario(chaos, "a", kills=10, lanes=2, verify_every=5))
    assert result.figures["restores_reached_ready"] == result.figures["kills"] == 10
    assert result.figures["cli_verify"]["failures"] == 0


@pytest.mark.timeout(600)
def test_postgres_stopped_mid_run_loses_nothing(chaos: Chaos) -> None:
    result = judge(run_scenario(chaos, "b", outage_s=20, ttl=10))
    assert result.figures["its_copy_of_that_message"] == "same"


@pytest.mark.timeout(600)
def test_postgres_black_holed_stops_the_browser_within_the_ttl(chaos: Chaos) -> None:
    result = judge(run_scenario(chaos, "c", ttl=10))
    assert result.figures["browser_stopped_after_s"] <= 10
    assert result.figures["two_browsers_s"] == 0


@pytest.mark.timeout(600)
def test_flipped_chunk_falls_back_to_the_generation_before(chaos: Chaos) -> None:
    result = judge(run_scenario(chaos, "d"))
    assert result.figures["fell_back_to"] < result.figures["damaged_generation"]


@pytest.mark.timeout(600)
def test_killed_chromium_and_hung_renderer_are_relaunched(chaos: Chaos) -> None:
    result = judge(run_scenario(chaos, "e"))
    assert result.figures["hung"]["ready_s"] is not None


@pytest.mark.timeout(600)
def test_disk_full_during_restore_leaves_the_profile_alone(chaos: Chaos) -> None:
    judge(run_scenario(chaos, "f"))


def test_scripts_chaos_is_documented() -> None:
    """The README names scripts/chaos and its options."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "scripts/chaos" in readme and "--kills" in readme and "--only" in readme
