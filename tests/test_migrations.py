"""Migrations build the schema from plain SQL files, once, even when run concurrently."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from app.store.migrate import load_migrations, migrate

pytestmark = pytest.mark.anyio


async def test_schema_from_migrations(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await migrate(conn)
        assert applied == [m.version for m in load_migrations()]
        tables = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'sessionkeeper'")}
        assert {"sessions", "snapshots", "chunks", "schema_migrations"} <= tables
        # Chunk data is stored uncompressed by PostgreSQL (it is zstd already).
        storage = await conn.fetchval(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'chunks'::regclass "
            "AND attname = 'data'")
        assert storage in (b"e", "e")
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_two_processes_at_once(empty_database_url: str) -> None:
    results: list[list[int]] = []

    async def run() -> None:
        conn = await asyncpg.connect(empty_database_url)
        try:
            results.append(await migrate(conn))
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run)
    assert sorted(len(r) for r in results) == [0, 0, 0, len(load_migrations())]
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM sessionkeeper.schema_migrations") == len(
            load_migrations())
    finally:
        await conn.close()


async def test_new_migration_applies_in_order(empty_database_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for m in load_migrations():
        (folder / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, folder)
        (folder / "9999_extra.sql").write_text("CREATE TABLE extra (id int);")
        assert await migrate(conn, folder) == [9999]
        assert await conn.fetchval("SELECT to_regclass('extra') IS NOT NULL")
        # A failing migration leaves no trace and no record.
        (folder / "9998_broken.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, folder)
        assert await conn.fetchval("SELECT to_regclass('half') IS NULL")
        assert not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM schema_migrations "
                                       "WHERE version = 9998)")
    finally:
        await conn.close()
