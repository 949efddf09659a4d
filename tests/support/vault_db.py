"""The vault as tests see it: a session's generations, a generation opened in Chromium, SQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg

from app.settings import Settings
from app.store.db import open_pool
from app.store.schema import DEFAULT_SCHEMA, server_settings
from app.vault.restore import restore_profile
from tests.support.daemon import DAEMON_SESSION
from tests.support.inspect_profile import inspect_demo_profile


async def connect(url: str) -> asyncpg.Connection:
    """A connection for a test's own SQL, on the schema the tables live in (as the app's are)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url, server_settings=server_settings(DEFAULT_SCHEMA))
    return conn


def generations(url: str, session: str = DAEMON_SESSION) -> list[dict[str, Any]]:
    async def query() -> list[dict[str, Any]]:
        conn = await connect(url)
        try:
            rows = await conn.fetch("SELECT generation, kind, login_state FROM snapshots "
                                    "WHERE session_id = $1 ORDER BY generation", session)
            return [dict(r) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(query())


def inspect_generation(url: str, generation: int, target: Path, demo_port: int,
                       session: str = DAEMON_SESSION) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        settings = Settings(database_url=url, data_dir=target.parent / "st")  # type: ignore[arg-type]
        async with open_pool(settings, migrate=False) as pool:
            await restore_profile(pool, session, target, generation=generation)
        return await inspect_demo_profile(target, demo_port)

    return asyncio.run(go())


def sql(url: str, query: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await connect(url)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())
