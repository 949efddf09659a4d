"""No silent local database in production (issue 14 item 2): deployed without DATABASE_URL,
sessionkeeper refuses with one line; on a laptop the embedded PostgreSQL stays the default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.store.db import deployed_on

ROOT = Path(__file__).resolve().parent.parent


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """No DATABASE_URL, no platform variable, state in a fresh folder."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SESSIONKEEPER_", "RAILWAY_", "RENDER")) and k != "DATABASE_URL"}
    env.update(SESSIONKEEPER_DATA_DIR=str(tmp_path / "state"),
               SESSIONKEEPER_PROFILE_DIR=str(tmp_path / "profile"),
               SESSIONKEEPER_LOG_FORMAT="json", PORT="18999")
    return env


@pytest.mark.parametrize(("variables", "platform", "hint"), [
    ({"RAILWAY_ENVIRONMENT_NAME": "production", "RAILWAY_PROJECT_ID": "p1"}, "Railway",
     "DATABASE_URL=${{Postgres.DATABASE_URL}}"),
    ({"RENDER": "true", "RENDER_SERVICE_ID": "srv-1"}, "Render", "render.yaml"),
    ({"SESSIONKEEPER_IMAGE": "1"}, "the Docker image", "-e DATABASE_URL="),
])
def test_deployed_without_database_url_refuses(bare_env: dict[str, str], tmp_path: Path,
                                               variables: dict[str, str], platform: str,
                                               hint: str) -> None:
    for command in (["run"], ["sessions"]):
        proc = run({**bare_env, **variables}, *command)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, proc.stderr
        assert f"DATABASE_URL is not set: on {platform}" in lines[0] and hint in lines[0]
    # Nothing was started: no embedded cluster, no profile.
    assert not (tmp_path / "state" / "pgdata").exists()
    assert not (tmp_path / "profile").exists()


def test_platform_detection() -> None:
    assert deployed_on({}) is None
    assert deployed_on({"HOME": "/root", "PATH": "/usr/bin"}) is None
    railway = deployed_on({"RAILWAY_SERVICE_ID": "x"})
    assert railway is not None and railway[0] == "Railway"
    render = deployed_on({"RENDER": "true"})
    assert render is not None and render[0] == "Render"


def test_laptop_keeps_the_embedded_database(bare_env: dict[str, str], tmp_path: Path) -> None:
    """Without platform variables the embedded PostgreSQL starts as before."""
    pytest.importorskip("pgserver", reason="the embedded extra is not installed")
    proc = run(bare_env, "migrate", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "embedded_database" in proc.stderr
    # pgserver's own steps (initdb's command line, pg_ctl's) are debug detail, not the log.
    chatter = [line for line in proc.stderr.splitlines() if '"logger": "pgserver"' in line
               and '"level": "info"' in line]
    assert chatter == []
    proc = run(bare_env, "sessions", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"sessions": []' in proc.stdout
    assert (tmp_path / "state" / "pgdata").is_dir()
