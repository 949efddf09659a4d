"""The suite's own secret grep (tests/support/leak_watch.py) fails a run that leaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE_SECRET = "probe-http-token-7f3a9c1e"


@pytest.mark.skipif(os.environ.get("SK_LEAK_PROBE") != "1",
                    reason="a probe: test_a_leak_fails_the_run runs it in a pytest of its own")
def test_probe_prints_a_secret() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['SESSIONKEEPER_HTTP_TOKEN'])"],
        env={**os.environ, "SESSIONKEEPER_HTTP_TOKEN": PROBE_SECRET}, capture_output=True,
        text=True, check=True)
    assert out.stdout.strip() == PROBE_SECRET


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_leak_fails_the_run(workers: str) -> None:
    # A pytest of its own: not a worker of this run, not sharing its record.
    env = {k: v for k, v in os.environ.items()
           if k != "SK_LEAK_WATCH_DIR" and not k.startswith("PYTEST_")}
    env.update(SK_LEAK_PROBE="1", COVERAGE_PROCESS_START="")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-n", workers, f"{Path(__file__)}::test_probe_prints_a_secret"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("SESSIONKEEPER_HTTP_TOKEN appears in the output of "
            "tests/test_leak_watch.py::test_probe_prints_a_secret") in proc.stdout
