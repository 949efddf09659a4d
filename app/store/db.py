"""Connecting to PostgreSQL: DATABASE_URL, or an embedded server for local use."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg

from app.errors import ConfigError, DatabaseUnavailable
from app.log import get_logger, register_secret
from app.settings import Settings

# The longest a pool is given to close its connections gracefully.
POOL_CLOSE_S = 3.0


def describe_url(url: str) -> str:
    """host:port/database of a URL, without user or password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}{parts.path or '/'}"


def _start_embedded(data_dir: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # noqa: PLC0415  (heavy import, only when embedded)

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(  # type: ignore[attr-defined]
            str(data_dir.absolute()), cleanup_mode="stop")
    uri: str = server.get_uri()
    return uri


async def database_url(settings: Settings) -> str:
    """The configured URL, or the URL of an embedded server started on demand."""
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        password = urlsplit(url).password
        register_secret(password)
        return url
    data_dir = settings.embedded_pg_dir
    get_logger().warning("embedded_database", data_dir=str(data_dir),
                         note="DATABASE_URL is not set; this embedded PostgreSQL is for "
                         "local use only")
    try:
        return await anyio.to_thread.run_sync(_start_embedded, data_dir)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {data_dir}: {exc}; set DATABASE_URL"
        ) from None


async def connect(url: str, connect_timeout: float = 10.0) -> asyncpg.Connection:
    """One connection, with errors turned into one clear line."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(url, timeout=connect_timeout)
        return conn
    except (asyncpg.InterfaceError, ValueError) as exc:
        raise ConfigError(f"invalid DATABASE_URL: {exc}") from None
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {describe_url(url)}: {exc or type(exc).__name__}; "
            "check DATABASE_URL and that the server is up"
        ) from None


@asynccontextmanager
async def bounded(pool: asyncpg.Pool, seconds: float) -> AsyncIterator[Any]:
    """A pooled connection for short queries that must finish within `seconds`, from acquiring
    to releasing (TimeoutError otherwise). A connection that overran is terminated rather
    than reset: on a half-open socket a reset (or asyncpg's cancel request) would hang too."""
    with anyio.fail_after(seconds):
        conn = await pool.acquire(timeout=seconds)
    try:
        with anyio.fail_after(seconds):
            yield conn
    except BaseException:
        conn.terminate()  # back to the pool at once, as a closed connection
        raise
    with anyio.move_on_after(seconds, shield=True) as scope:
        await pool.release(conn, timeout=seconds)
    if scope.cancelled_caught:
        conn.terminate()


@asynccontextmanager
async def open_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 4, migrate: bool = True,
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the configured (or embedded) database, migrated unless told otherwise."""
    url = await database_url(settings)
    # Fail fast with a clear line when the database is not there.
    conn = await connect(url, settings.db_connect_timeout)
    try:
        if migrate:
            from app.store.migrate import migrate as run_migrations  # noqa: PLC0415

            await run_migrations(conn)
    finally:
        await conn.close()
    # No query waits forever on a half-open connection: the client gives up after the
    # command timeout, and the server ends a statement that runs longer.
    pool_kwargs: dict[str, Any] = {
        "min_size": min_size, "max_size": max_size, "timeout": settings.db_connect_timeout,
        "command_timeout": settings.db_command_timeout,
        "server_settings": {"statement_timeout": str(int(settings.db_command_timeout * 1000))},
    }
    try:
        pool = await asyncpg.create_pool(url, **pool_kwargs)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {describe_url(url)}: {exc}"
        ) from None
    try:
        yield pool
    finally:
        # A database that stopped answering must not hold the process: close gracefully
        # for a moment, then drop the connections.
        with anyio.move_on_after(POOL_CLOSE_S, shield=True) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()
