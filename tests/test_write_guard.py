"""No manual write races the owner: while a lease is held, the database refuses a snapshot or
import that carries no lease token (unless forced), the CLI refuses snapshot, import, prune and
delete of that session with one line naming the holder, and the daemon's own generations
carry its token. An import missing chunks commits nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.errors import CorruptSnapshot, LeaseHeld
from app.snapshot.manifest import FileEntry, Manifest
from app.store import leases, repo
from app.vault.archive import HEADER_NAME, export_generation, import_generation
from app.vault.commit import commit_manifest
from app.vault.manifests import load_manifest
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from tests.support.daemon import DAEMON_SESSION, Daemon, login
from tests.support.profile_tree import ProfileTree, tree_files
from tests.support.vault_db import sql

ROOT = Path(__file__).resolve().parent.parent

_INSERT = ("INSERT INTO snapshots (session_id, generation, kind, format_version, manifest,"
           " manifest_sha256, content_digest, files, bytes_raw, bytes_stored, bytes_uploaded,"
           " chunks_total, chunks_new, chunks_reused, duration_ms, lease_token)"
           " VALUES ($1, $2, 'manual', 1, '', '', '', 0, 0, 0, 0, 0, 0, 0, 0, NULL)")


def _gens(rows: list[repo.GenerationInfo]) -> list[int]:
    return sorted(g.generation for g in rows)


@pytest.mark.anyio
async def test_database_refuses_a_tokenless_write_under_a_live_lease(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path) -> None:
    """Straight to the vault, past the CLI's own check: the trigger is what refuses."""
    await save_snapshot(pool, "s", profile.root, options)  # no lease yet: accepted
    profile.add_blob("elsewhere", 5000)
    await save_snapshot(pool, "t", profile.root, options)
    await export_generation(pool, "t", tmp_path / "t.skx")
    async with pool.acquire() as conn:
        token = await leases.try_acquire(conn, "s", "holder-on-host-1", 30)
    assert token is not None
    profile.add_blob("written-by-hand", 5000)
    with pytest.raises(LeaseHeld, match="holder-on-host-1"):
        await save_snapshot(pool, "s", profile.root, options)
    with pytest.raises(LeaseHeld, match="holder-on-host-1"):
        await import_generation(pool, "s", tmp_path / "t.skx")
    assert (await import_generation(pool, "free", tmp_path / "t.skx"))["changed"]
    async with pool.acquire() as conn:
        assert _gens(await repo.list_generations(conn, "s")) == [1]
        # Whoever writes: plain SQL without a token is refused too.
        with pytest.raises(asyncpg.PostgresError) as err:
            await conn.execute(_INSERT, "s", 90)
        assert err.value.sqlstate == repo.LEASE_HELD_SQLSTATE
        assert "holder-on-host-1" in str(err.value)
        async with conn.transaction():  # the override is local to one transaction
            await conn.execute("SET LOCAL sessionkeeper.force = on")
            await conn.execute(_INSERT, "s", 91)
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(_INSERT, "s", 92)
        await conn.execute("DELETE FROM snapshots WHERE generation = 91")
    # Forced through the vault: committed, without a token.
    forced = await save_snapshot(pool, "s", profile.root, options, force=True)
    assert forced.changed and forced.generation == 2
    # The owner's own write carries its token and goes through.
    profile.add_blob("written-by-owner", 5000)
    owned = await save_snapshot(pool, "s", profile.root, options, lease_token=token)
    assert owned.changed
    async with pool.acquire() as conn:
        rows = {r["generation"]: r["lease_token"] for r in await conn.fetch(
            "SELECT generation, lease_token FROM snapshots WHERE session_id = 's'")}
        assert rows == {1: None, 2: None, owned.generation: token}
        assert await leases.release(conn, "s", "holder-on-host-1", token)
    # Released: a manual write is welcome again.
    profile.add_blob("after-release", 5000)
    assert (await save_snapshot(pool, "s", profile.root, options)).changed


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _refused(proc: subprocess.CompletedProcess[str], holder: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert holder in lines[0] and "--force" in lines[0] and "Traceback" not in proc.stderr


def test_daemon_rows_carry_its_token_and_the_cli_cannot_race_it(
        start: Callable[..., Daemon], daemon_env: dict[str, str], cli_env: dict[str, str],
        database_url: str, profile: ProfileTree, tmp_path: Path) -> None:
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    daemon = start()
    login(daemon, demo_port)
    acquired = daemon.wait_for("lease_acquired")
    token, holder = acquired["fencing_token"], acquired["owner"]
    daemon.wait_for("snapshot_committed", 30, kind="login")
    session = DAEMON_SESSION

    def kept() -> list[list[Any]]:
        rows: list[list[Any]] = json.loads(sql(database_url,
                              "SELECT coalesce(json_agg(json_build_array(generation, kind, "
                              "lease_token) ORDER BY generation), '[]')::text FROM snapshots "
                              "WHERE session_id = $1", session))
        return rows

    before = kept()
    export = tmp_path / "old.skx"
    assert _cli(cli_env, "export", session, str(export)).returncode == 0  # reading is fine
    for args in (("snapshot", session, "--profile", str(profile.root)),
                 ("import", session, str(export)),
                 ("prune", session, "--keep", "1"),
                 ("delete", session, "--yes")):
        _refused(_cli(cli_env, *args), holder)
    assert kept() == before
    assert daemon.proc.poll() is None

    forced = _cli(cli_env, "snapshot", session, "--profile", str(profile.root), "--force",
                  "--json")
    assert forced.returncode == 0, forced.stderr
    generation = json.loads(forced.stdout)["generation"]
    warnings = [json.loads(line) for line in forced.stderr.splitlines()
                if '"lease_overridden"' in line]
    assert warnings and warnings[0]["level"] == "warning" and warnings[0]["holder"] == holder
    assert warnings[0]["command"] == "snapshot"
    # A prune that is forced goes through too (it keeps everything here).
    assert _cli(cli_env, "prune", session, "--keep", "50", "--force").returncode == 0

    daemon.stop_cleanly()
    final = daemon.wait_for("shutdown_completed")["generation"]
    rows = kept()
    mine = [r for r in rows if r[0] != generation]
    assert [r[1] for r in mine][:1] == ["login"] and final in [r[0] for r in mine]
    # Every generation the daemon wrote carries the token it logged; the forced one none.
    assert all(r[2] == token for r in mine), rows
    assert [r[2] for r in rows if r[0] == generation] == [None]


def _without_one_chunk(src: Path, dst: Path, leave_out: set[str]) -> None:
    """A well-formed export that lacks one chunk member, its object count made to match."""
    with tarfile.open(src, "r") as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        members = tin.getmembers()
        dropped = [m for m in members if m.name in leave_out]
        assert len(dropped) == 1
        for member in members:
            if member in dropped:
                continue
            data = tin.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == HEADER_NAME:
                header = json.loads(data)
                header["objects"] -= 1
                data = json.dumps(header).encode()
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


@pytest.mark.anyio
async def test_a_commit_naming_a_missing_chunk_commits_nothing(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions) -> None:
    """The last guard of every writer (snapshot, import, rekey): the commit itself counts the
    chunks its manifest names and refuses when one is not stored (import and restore check
    earlier too, so only a direct commit reaches this one)."""
    await save_snapshot(pool, "s", profile.root, options)
    async with pool.acquire() as conn:
        opened = await load_manifest(conn, "s", 1)
        ghost = FileEntry("Default/ghost", 0o600, 100, 0, (os.urandom(32),), (100,))
        holed = Manifest(files=[*opened.manifest.files, ghost], dirs=opened.manifest.dirs,
                         addressing=opened.manifest.addressing)
        with pytest.raises(CorruptSnapshot, match="1 chunks are missing; nothing committed"):
            await commit_manifest(conn, "s", holed, level=3, kind="manual", login_state=None,
                                  chunks_new=0, bytes_uploaded=0, started=time.monotonic())
        assert _gens(await repo.list_generations(conn, "s")) == [1]


@pytest.mark.anyio
async def test_import_missing_chunks_commits_nothing_into_a_session_with_generations(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path) -> None:
    await save_snapshot(pool, "src", profile.root, options)
    await export_generation(pool, "src", tmp_path / "first.skx")
    blob = profile.add_blob("only-in-the-second", 40_000)
    await save_snapshot(pool, "src", profile.root, options)
    await export_generation(pool, "src", tmp_path / "second.skx")
    # The receiving session already holds generations (the first one's chunks among them).
    await import_generation(pool, "dst", tmp_path / "first.skx")
    await restore_profile(pool, "dst", tmp_path / "before")
    with tarfile.open(tmp_path / "second.skx") as tar:
        objects = {bytes.fromhex(Path(n).name.split(".")[0]): n for n in tar.getnames()
                   if n.startswith("chunks/")}
    async with pool.acquire() as conn:
        before = _gens(await repo.list_generations(conn, "dst"))
        in_dst = await repo.existing_digests(conn, "dst", list(objects))
    # A chunk of the new blob that the receiving session does not hold.
    names = [n for d, n in objects.items() if d not in in_dst]
    assert names, "the second export brings no new chunk"
    _without_one_chunk(tmp_path / "second.skx", tmp_path / "holed.skx", {names[-1]})
    with pytest.raises(CorruptSnapshot, match="missing; nothing committed"):
        await import_generation(pool, "dst", tmp_path / "holed.skx")
    async with pool.acquire() as conn:
        assert _gens(await repo.list_generations(conn, "dst")) == before
    await restore_profile(pool, "dst", tmp_path / "after")
    assert tree_files(tmp_path / "after") == tree_files(tmp_path / "before")
    assert blob.name not in {Path(p).name for p in tree_files(tmp_path / "after")}
    # The whole export imports (the vault was left usable).
    assert (await import_generation(pool, "dst", tmp_path / "second.skx"))["changed"]
