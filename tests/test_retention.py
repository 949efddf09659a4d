"""Keeping N generations and collecting chunks, also while other writers are at work."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from app.store import repo
from app.vault.manifests import open_manifest
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.retention import collect_garbage, prune
from app.vault.save import save_snapshot
from tests.support.profile_tree import BLOBS, ProfileTree, build_profile

pytestmark = pytest.mark.anyio


async def _referenced_and_stored(pool: asyncpg.Pool, session: str) -> tuple[set[bytes], set[bytes]]:
    async with pool.acquire() as conn, conn.transaction():
        referenced: set[bytes] = set()
        for packed in await repo.all_manifests(conn, session):
            referenced |= (await open_manifest(conn, session, packed)).referenced()
        return referenced, {d async for d in repo.iter_stored_digests(conn, session)}


async def test_keep_newest_n_and_collect_chunks(
    pool: asyncpg.Pool, profile: ProfileTree, tmp_path: Path
) -> None:
    options = VaultOptions(keep_generations=2)
    for i in range(4):
        profile.add_blob(f"b{i}", 80_000)
        await save_snapshot(pool, "s1", profile.root, options)
    async with pool.acquire() as conn:
        gens = [g.generation for g in await repo.list_generations(conn, "s1")]
    assert gens == [4, 3]
    referenced, stored = await _referenced_and_stored(pool, "s1")
    assert referenced == stored
    for g in gens:
        await restore_profile(pool, "s1", tmp_path / f"g{g}", generation=g)


async def test_prune_command_semantics(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions
) -> None:
    for i in range(3):
        # Each generation holds one blob the others do not.
        for old in (profile.root / BLOBS).rglob("b*"):
            old.unlink()
        profile.add_blob(f"b{i}", 80_000)
        await save_snapshot(pool, "s1", profile.root, options)
    result = await prune(pool, "s1", 1)
    assert result.kept == [3] and result.deleted_generations == [2, 1]
    assert result.chunks_deleted > 0 and not result.gc_deferred
    referenced, stored = await _referenced_and_stored(pool, "s1")
    assert referenced == stored
    again = await prune(pool, "s1", 1)
    assert again.deleted_generations == [] and again.chunks_deleted == 0


async def test_gc_waits_for_writers(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions
) -> None:
    await save_snapshot(pool, "s1", profile.root, options)
    async with pool.acquire() as conn:
        await repo.insert_chunks(conn, "s1", [(b"\x01" * 32, 3, "raw", b"abc")])
    async with pool.acquire() as writer, repo.chunk_lock_shared(writer, "s1"):
        async with pool.acquire() as conn:
            assert await collect_garbage(conn, "s1") is None  # deferred, nothing deleted
            assert b"\x01" * 32 in await repo.existing_digests(conn, "s1", [b"\x01" * 32])
    async with pool.acquire() as conn:
        assert await collect_garbage(conn, "s1") == 1


async def test_sessions_do_not_share_chunks(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    await save_snapshot(pool, "a", profile.root, options)
    await save_snapshot(pool, "b", profile.root, options)
    async with pool.acquire() as conn:
        assert await repo.delete_session(conn, "a")
    await restore_profile(pool, "b", tmp_path / "b")
    _, stored = await _referenced_and_stored(pool, "a")
    assert stored == set()


async def test_concurrent_writers_and_pruners_never_lose_a_chunk(
    pool: asyncpg.Pool, settings: object, tmp_path: Path
) -> None:
    """Two writers on one session and an aggressive pruner: every generation restores."""
    trees = [build_profile(tmp_path / f"p{i}", idb_bytes=600_000, blob_count=2, seed=i)
             for i in range(2)]
    options = VaultOptions(keep_generations=3)
    stop = anyio.Event()

    async def writer(tree: ProfileTree, rounds: int) -> None:
        for i in range(rounds):
            tree.add_blob(f"w{i}", 70_000 + i)
            await save_snapshot(pool, "shared", tree.root, options)

    async def pruner() -> None:
        while not stop.is_set():
            await prune(pool, "shared", 1)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pruner)
        async with anyio.create_task_group() as writers:
            for tree in trees:
                writers.start_soon(writer, tree, 6)
        stop.set()
    async with pool.acquire() as conn:
        gens = [g.generation for g in await repo.list_generations(conn, "shared")]
    assert gens
    for g in gens:
        await restore_profile(pool, "shared", tmp_path / f"r{g}", generation=g)
    referenced, stored = await _referenced_and_stored(pool, "shared")
    assert referenced <= stored
