"""Leases and fencing in the database (the daemon's use of them comes with issue 4)."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from app.errors import LeaseLost
from app.store import leases, repo
from app.vault.options import VaultOptions
from app.vault.save import save_snapshot
from tests.support.profile_tree import ProfileTree

pytestmark = pytest.mark.anyio


async def test_acquire_renew_release(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        first = await leases.try_acquire(conn, "s", "a", 30)
        assert first == 1
        assert await leases.try_acquire(conn, "s", "b", 30) is None
        held = await leases.holder(conn, "s")
        assert held.owner == "a" and held.token == 1 and 29 < (held.expires_in_s or 0) <= 30
        assert await leases.renew(conn, "s", "a", 1, 30)
        assert not await leases.renew(conn, "s", "b", 1, 30)
        assert await leases.release(conn, "s", "a", 1)
        assert (await leases.holder(conn, "s")).owner is None
        assert await leases.try_acquire(conn, "s", "b", 30) == 2


async def test_expired_lease_moves_on_and_old_owner_cannot_renew(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await leases.try_acquire(conn, "s", "a", 0.3) == 1
        await anyio.sleep(0.5)
        assert (await leases.holder(conn, "s")).owner is None
        assert await leases.try_acquire(conn, "s", "b", 30) == 2
        # The paused former owner wakes up: it cannot extend or release what is not its own.
        assert not await leases.renew(conn, "s", "a", 1, 30)
        assert not await leases.release(conn, "s", "a", 1)
        assert (await leases.holder(conn, "s")).owner == "b"


async def test_one_winner_among_many(pool: asyncpg.Pool) -> None:
    winners: list[str] = []

    async def contend(name: str) -> None:
        async with pool.acquire() as conn:
            if await leases.try_acquire(conn, "s", name, 30) is not None:
                winners.append(name)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(contend, f"p{i}")
    assert len(winners) == 1


async def test_stale_fencing_token_is_refused(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions
) -> None:
    async with pool.acquire() as conn:
        old = await leases.try_acquire(conn, "s", "old", 0.2)
    assert old is not None
    await save_snapshot(pool, "s", profile.root, options, lease_token=old)
    await anyio.sleep(0.4)
    async with pool.acquire() as conn:
        new = await leases.try_acquire(conn, "s", "new", 30)
    assert new == old + 1
    profile.add_blob("written-by-old", 5000)
    with pytest.raises(LeaseLost, match="stale fencing token"):
        await save_snapshot(pool, "s", profile.root, options, lease_token=old)
    async with pool.acquire() as conn:
        assert [g.generation for g in await repo.list_generations(conn, "s")] == [1]
        # Refused by the database itself, whoever writes.
        with pytest.raises(asyncpg.PostgresError) as err:
            await conn.execute(
                "INSERT INTO snapshots (session_id, generation, kind, format_version, manifest,"
                " manifest_sha256, content_digest, files, bytes_raw, bytes_stored,"
                " bytes_uploaded, chunks_total, chunks_new, chunks_reused, duration_ms,"
                " lease_token) VALUES ('s', 99, 'periodic', 1, '', '', '', 0, 0, 0, 0, 0, 0,"
                " 0, 0, $1)", old)
        assert err.value.sqlstate == leases.FENCED_SQLSTATE
    result = await save_snapshot(pool, "s", profile.root, options, lease_token=new)
    assert result.changed and result.generation == 2


def test_owner_id_prefers_the_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAILWAY_REPLICA_ID", raising=False)
    monkeypatch.delenv("RENDER_INSTANCE_ID", raising=False)
    assert f"-{__import__('os').getpid()}-" in leases.owner_id()
    monkeypatch.setenv("RENDER_INSTANCE_ID", "srv-abc-xyz")
    assert leases.owner_id().startswith("srv-abc-xyz-")
    monkeypatch.setenv("RAILWAY_REPLICA_ID", "r-123")
    assert leases.owner_id().startswith("r-123-")


async def test_registered_sessions_in_one_query(pool: asyncpg.Pool, profile: ProfileTree,
                                                options: VaultOptions) -> None:
    async with pool.acquire() as conn:
        for sid in ("a", "b"):
            await leases.register(conn, sid, None)
        await repo.ensure_session(conn, "loose")  # has snapshots, never registered
    for i, sid in enumerate(("a", "a", "loose")):
        profile.add_blob(f"x{i}", 5_000)
        await save_snapshot(pool, sid, profile.root, options)
    async with pool.acquire() as conn:
        token = await leases.try_acquire(conn, "a", "owner-1", 30)
        assert token is not None
        rows = {r.session_id: r for r in await repo.registered_sessions(conn)}
        newest = await repo.latest_generation(conn, "a")
    assert set(rows) == {"a", "b"}
    assert rows["a"].holder == "owner-1" and rows["a"].generations == 2
    assert rows["a"].latest == newest
    assert rows["b"].holder is None and rows["b"].generations == 0 and rows["b"].latest is None
