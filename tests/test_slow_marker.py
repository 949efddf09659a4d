"""The `slow` marker (pyproject.toml): slow tests are skipped unless `-m` names them or
SK_SLOW=1, so the default run stays short and `scripts/test -m slow` runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import slow_tests_wanted

ROOT = Path(__file__).resolve().parent.parent
PROBE = "tests/support/slow_probe.py"


def _outcomes(*args: str) -> dict[str, str]:
    """Each probe test's outcome in a pytest of its own (SK_SLOW unset)."""
    env = {k: v for k, v in os.environ.items() if k != "SK_SLOW"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "-rA", PROBE, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word == "PASSED":
            found[rest.split("::")[1].split()[0]] = word
        elif word == "SKIPPED":  # SKIPPED [1] tests/support/slow_probe.py:10: why
            assert "-m slow or SK_SLOW=1" in rest, line
            found["test_marked_slow"] = word
    return found


@pytest.mark.parametrize("args,want", [
    ((), {"test_marked_slow": "SKIPPED", "test_not_marked": "PASSED"}),
    (("-m", "slow"), {"test_marked_slow": "PASSED"}),
])
def test_slow_tests_run_only_when_asked(args: tuple[str, ...], want: dict[str, str]) -> None:
    assert _outcomes(*args) == want


@pytest.mark.parametrize("markexpr,environ,wanted", [
    ("", {}, False),
    ("", {"SK_SLOW": "1"}, True),
    ("", {"SK_SLOW": "0"}, False),
    ("slow", {}, True),
    ("slow and not chaos", {}, True),
    ("not slow", {}, True),  # -m deselects them itself
    ("slowish", {}, False),
])
def test_who_asks_for_slow_tests(markexpr: str, environ: dict[str, str], wanted: bool) -> None:
    assert slow_tests_wanted(markexpr, environ) is wanted
