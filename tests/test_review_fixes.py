"""Data-loss paths a review found (issue 12), each reproduced before its fix.

Real PostgreSQL and real profile-shaped trees. Where a local fault is needed (a full disk) it is
injected by making the one system call fail, named as such.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import pytest

import app.vault.restore as restore_mod
from app.errors import UserError
from app.snapshot.staging import STAGING_PREFIX, work_dir_for
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from app.vault.statcache import StatCache
from tests.support.daemon import ROOT
from tests.support.profile_tree import BLOBS, ProfileTree, tree_files

pytestmark = pytest.mark.anyio


def test_owner_ids_differ_between_containers_with_the_same_host_and_pid() -> None:
    """Under tini every container's daemon is pid 7 or so, and hostnames repeat: the owner
    id must still tell two processes apart (a lease is fenced by it)."""
    script = ("import os, socket; os.getpid = lambda: 7; socket.gethostname = lambda: 'box';"
              "from app.store.leases import owner_id; print(owner_id())")
    ids = {subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip() for _ in range(2)}
    assert len(ids) == 2 and all(i.startswith("box-7-") for i in ids)


async def test_the_stat_cache_forgets_files_that_are_gone(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions) -> None:
    for path in profile.root.rglob("*"):  # old enough to be cached ("racily clean" aside)
        if not path.is_symlink():
            os.utime(path, (path.stat().st_atime - 60, path.stat().st_mtime - 60))
    await save_snapshot(pool, "s", profile.root, options)
    cache_path = StatCache.path_for(work_dir_for(profile.root), "s")
    blobs = sorted(p for p in (profile.root / BLOBS).rglob("*") if p.is_file())
    gone = str(blobs[0].relative_to(profile.root))
    assert gone in StatCache.load(cache_path, "s").entries
    blobs[0].unlink()  # IndexedDB deletes a blob file with its record
    await save_snapshot(pool, "s", profile.root, options)
    assert gone not in StatCache.load(cache_path, "s").entries


async def test_a_cancelled_snapshot_leaves_no_staging_behind(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions) -> None:
    work = work_dir_for(profile.root)
    for delay in (0.001, 0.005, 0.02, 0.05, 0.1):
        profile.add_messages(50)
        with anyio.move_on_after(delay):
            await save_snapshot(pool, "s", profile.root, options)
        left = [p.name for p in work.iterdir() if p.name.startswith(STAGING_PREFIX)] \
            if work.exists() else []
        # Hard links in a leaked staging folder keep deleted LevelDB tables on the disk.
        assert left == [], f"cancelled after {delay}s: {left}"


async def test_a_full_disk_during_restore_is_an_error_not_a_corrupt_generation(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await save_snapshot(pool, "s", profile.root, options)
    profile.add_messages(30)
    await save_snapshot(pool, "s", profile.root, options)
    target = tmp_path / "restored"
    await restore_profile(pool, "s", target, generation=1)
    before = tree_files(target)

    real_write = os.pwritev

    def full_disk(fd: int, parts: list[bytes], offset: int) -> int:  # fault injection: ENOSPC
        if any(parts):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, parts, offset)

    monkeypatch.setattr(restore_mod.os, "pwritev", full_disk)
    with pytest.raises(UserError, match="No space left on device"):
        await restore_profile(pool, "s", target)
    monkeypatch.setattr(restore_mod.os, "pwritev", real_write)
    # Not a corrupt generation: nothing fell back to generation 1 over the profile, which
    # is as it was; no half-written tree is left beside it.
    assert tree_files(target) == before
    assert not [p for p in target.parent.iterdir() if ".restore-" in p.name]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM snapshots WHERE session_id = 's'") == 2
    shutil.rmtree(target)


def test_the_final_snapshot_lands_when_shutdown_outlasts_the_lease(
        daemon_env: dict[str, str], tmp_path: Path) -> None:
    """A bot that takes longer to stop than the lease lasts: the renewal has stopped, the
    lease runs out, the waiting process takes it, and the final commit would be refused as
    stale. The lease is extended over the shutdown instead; the next owner waits for the
    release and restores the final generation."""
    from tests.support.daemon import Daemon
    from tests.support.vault_db import generations

    child = str(ROOT / "tests" / "support" / "exec_child.py")
    env = {**daemon_env, "SESSIONKEEPER_LEASE_TTL": "2", "SESSIONKEEPER_SHUTDOWN_TIMEOUT": "15",
           "SESSIONKEEPER_DEMO_MESSAGE_RATE": "0"}
    first = Daemon({**env, "CHILD_STOP_DELAY": "5", "CHILD_MARKER": "777"},
                   "exec", "--", sys.executable, child)
    second = None
    try:
        first.wait_for("exec_child_state", 60, state="qr")
        second = Daemon({**env, "SESSIONKEEPER_PROFILE_DIR": str(tmp_path / "second")},
                        "exec", "--", sys.executable, child)
        second.wait_for("waiting_for_lease", 30)
        first.signal(signal.SIGTERM)
        assert first.wait_exit(30) == 0
        assert "final_snapshot_failed" not in first.names(), first.log_text()
        done = first.wait_for("shutdown_completed")
        assert done["changed"] and done["generation"] is not None
        restored = second.wait_for("session_restored", 30)
        assert restored["generation"] == done["generation"]
        assert generations(env["DATABASE_URL"])[-1]["generation"] == done["generation"]
        second.wait_for("exec_child_state", 60, state="qr")  # its child handles signals now
        second.signal(signal.SIGTERM)
        assert second.wait_exit(30) == 0
    finally:
        first.kill_all()
        if second is not None:
            second.kill_all()


async def test_a_generation_pruned_during_restore_is_skipped_not_a_new_session(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention deletes the newest generation between the restore's list and its manifest
    read (the race is forced by deleting it at that moment: injected, named as such). The
    restore takes the next generation; it never reports the session as new."""
    await save_snapshot(pool, "s", profile.root, options)
    profile.add_messages(30)
    await save_snapshot(pool, "s", profile.root, options)
    real_load = restore_mod.load_manifest
    raced: list[int] = []

    async def load_after_prune(conn: asyncpg.Connection, session_id: str, gen: int) -> object:
        if not raced:
            raced.append(gen)
            await conn.execute("DELETE FROM snapshots WHERE session_id = $1 AND generation = $2",
                               session_id, gen)
        return await real_load(conn, session_id, gen)

    monkeypatch.setattr(restore_mod, "load_manifest", load_after_prune)
    result = await restore_profile(pool, "s", tmp_path / "restored")
    assert raced == [2] and result.generation == 1
    assert result.skipped and result.skipped[0]["generation"] == 2
