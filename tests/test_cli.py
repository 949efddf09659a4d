"""The command line as a user runs it: a subprocess, a real database, one JSON object out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.profile_tree import ProfileTree, tree_files

ROOT = Path(__file__).resolve().parent.parent


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def run_json(env: dict[str, str], *args: str) -> dict[str, object]:
    proc = run(env, *args, "--json")
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    out: dict[str, object] = json.loads(lines[0])
    return out


def test_full_cycle(cli_env: dict[str, str], profile: ProfileTree, tmp_path: Path) -> None:
    assert "0001_vault" in str(run_json(cli_env, "migrate")["migrations"])
    snap = run_json(cli_env, "snapshot", "s1", "--profile", str(profile.root))
    for key in ("generation", "changed", "files", "bytes_raw", "bytes_uploaded", "chunks_new",
                "chunks_reused", "duration_ms"):
        assert key in snap
    assert snap["changed"] is True and snap["generation"] == 1
    same = run_json(cli_env, "snapshot", "s1", "--profile", str(profile.root))
    assert same["changed"] is False and same["bytes_uploaded"] == 0
    profile.add_blob("z", 9000)
    assert run_json(cli_env, "snapshot", "s1", "--profile", str(profile.root))["generation"] == 2

    sessions = run_json(cli_env, "sessions")["sessions"]
    assert isinstance(sessions, list) and sessions[0]["session_id"] == "s1"
    assert sessions[0]["generations"] == 2
    gens = run_json(cli_env, "snapshots", "s1")["generations"]
    assert isinstance(gens, list) and [g["generation"] for g in gens] == [2, 1]

    target = tmp_path / "restored"
    restored = run_json(cli_env, "restore", "s1", "--profile", str(target), "--generation", "1")
    assert restored["generation"] == 1
    assert not (target / "Default/IndexedDB/https_web.example.com_0.indexeddb.blob/1/00/z").exists()

    file = tmp_path / "s1.skx"
    assert run_json(cli_env, "export", "s1", str(file))["generation"] == 2
    assert run_json(cli_env, "import", "copy", str(file))["generation"] == 1
    run_json(cli_env, "restore", "copy", "--profile", str(tmp_path / "copy"))
    run_json(cli_env, "restore", "s1", "--profile", str(tmp_path / "s1"))
    assert tree_files(tmp_path / "copy") == tree_files(tmp_path / "s1")

    pruned = run_json(cli_env, "prune", "s1", "--keep", "1")
    assert pruned["deleted_generations"] == [1]
    assert run_json(cli_env, "delete", "copy", "--yes")["deleted"] is True
    names = [s["session_id"] for s in run_json(cli_env, "sessions")["sessions"]]  # type: ignore[union-attr]
    assert names == ["s1"]

    human = run(cli_env, "snapshots", "s1").stdout
    assert "generation" in human and "manual" in human
    # Claim-mode registration, printed for a person and as JSON.
    assert "registered: True" in run(cli_env, "sessions", "add", "wa-2").stdout
    listed = run_json(cli_env, "sessions")["sessions"]
    assert any(s["session_id"] == "wa-2" and s["registered"] for s in listed)  # type: ignore[union-attr]
    assert run_json(cli_env, "sessions", "remove", "wa-2")["registered"] is False
    assert "owner" in run(cli_env, "sessions").stdout


@pytest.mark.parametrize("args,code,needle", [
    (["restore", "nobody", "--profile", "/tmp/x"], 1, "no session 'nobody'"),
    (["snapshots", "nobody"], 1, "no session 'nobody'"),
    (["delete", "nobody", "--yes"], 1, "no session 'nobody'"),
    (["delete", "s1"], 2, "pass --yes"),
    (["snapshot", "s", "--profile", "/definitely/not/here"], 1, "does not exist"),
    (["import", "s", "/definitely/not/here.skx"], 1, "is not a file"),
    (["restore", "../etc", "--profile", "/tmp/x"], 2, "invalid session id"),
    (["prune", "s", "--keep", "0"], 2, "expected an integer >= 1"),
    (["restore", "s", "--profile", "/tmp/x", "--generation", "abc"], 2, "integer"),
    (["snapshot", "s"], 1, "does not exist"),
    (["snapshot"], 2, "session"),
    (["frobnicate"], 2, "invalid choice"),
    (["sessions", "add"], 2, "needs a session id"),
    (["sessions", "remove", "nobody"], 1, "no session 'nobody'"),
    (["restore", "s", "--profile", "/etc/hostname"], 1, "is not a directory"),
    (["restore", "s", "--profile", "/"], 1, "name a profile directory"),
])
def test_bad_input_is_one_line(cli_env: dict[str, str], args: list[str], code: int,
                               needle: str) -> None:
    proc = run(cli_env, *args, check=False)
    assert proc.returncode == code
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("var,value", [
    ("SESSIONKEEPER_KEEP_GENERATIONS", "zero"),
    ("SESSIONKEEPER_KEEP_GENERATIONS", "0"),
    ("SESSIONKEEPER_LOG_FORMAT", "xml"),
    ("SESSIONKEEPER_LOG_LEVEL", "loud"),
    ("SESSIONKEEPER_ZSTD_LEVEL", "99"),
    ("SESSIONKEEPER_SESSION_ID", "a/b"),
    ("PORT", "http"),
    ("DATABASE_URL", "mysql://root:hunter2@db/x"),
])
def test_invalid_setting_exit_2(cli_env: dict[str, str], var: str, value: str) -> None:
    proc = run({**cli_env, var: value}, "sessions", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0] and "accepts" in lines[0], proc.stderr
    assert "hunter2" not in proc.stderr


def test_unreachable_database(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/x",
           "SESSIONKEEPER_DB_CONNECT_TIMEOUT": "3"}
    proc = run(env, "sessions", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the database at 127.0.0.1:1/x" in lines[0]
    assert "hunter2" not in proc.stderr and "Traceback" not in proc.stderr


def test_password_never_logged(cli_env: dict[str, str], pg_server_url: str,
                               profile: ProfileTree) -> None:
    # The test server trusts any password, so a made-up one still connects.
    url = cli_env["DATABASE_URL"].replace("postgres@", "postgres:s3cr3t-pw@")
    if "postgres@" not in cli_env["DATABASE_URL"]:
        pytest.skip("test server URL has its own credentials")
    env = {**cli_env, "DATABASE_URL": url, "SESSIONKEEPER_LOG_LEVEL": "debug"}
    proc = run(env, "snapshot", "s1", "--profile", str(profile.root), "--json")
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout
    assert '"event": "snapshot_committed"' in proc.stderr


def test_python_dash_m_and_console_script_agree() -> None:
    exe = Path(sys.executable).parent / "sessionkeeper"
    a = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True)
    b = subprocess.run([str(exe), "--help"], capture_output=True, text=True,
                       env={**os.environ})
    assert a.returncode == b.returncode == 0
    assert a.stdout.replace("__main__.py", "sessionkeeper") == b.stdout


def test_profile_dir_setting_is_the_default(cli_env: dict[str, str], profile: ProfileTree,
                                            tmp_path: Path) -> None:
    env = {**cli_env, "SESSIONKEEPER_PROFILE_DIR": str(profile.root)}
    assert run_json(env, "snapshot", "s1")["generation"] == 1
    env["SESSIONKEEPER_PROFILE_DIR"] = str(tmp_path / "restored-here")
    assert run_json(env, "restore", "s1")["generation"] == 1
    assert (tmp_path / "restored-here" / "Local State").is_file()


def test_embedded_database_without_database_url(tmp_path: Path, profile: ProfileTree) -> None:
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and not k.startswith("SESSIONKEEPER_")}
    env.update(SESSIONKEEPER_DATA_DIR=str(tmp_path / "st"), SESSIONKEEPER_LOG_FORMAT="json")
    proc = run(env, "snapshot", "emb", "--profile", str(profile.root), "--json")
    assert json.loads(proc.stdout)["generation"] == 1
    assert '"event": "embedded_database"' in proc.stderr and "local use only" in proc.stderr
    assert (tmp_path / "st" / "pgdata" / "PG_VERSION").is_file()
    # The server stopped with the process; the next command starts it again and finds the data.
    out = run_json(env, "snapshots", "emb")
    assert [g["generation"] for g in out["generations"]] == [1]  # type: ignore[index]
