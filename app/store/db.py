"""Connecting to PostgreSQL: DATABASE_URL, or an embedded server for local use."""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg

from app.errors import ConfigError, DatabaseUnavailable
from app.log import get_logger, register_secret
from app.settings import Settings
from app.store.schema import DEFAULT_SCHEMA, require_current, server_settings

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


# What says a process runs deployed, and what to do there without DATABASE_URL.
_PLATFORMS = (
    ("Railway", ("RAILWAY_ENVIRONMENT_ID", "RAILWAY_PROJECT_ID", "RAILWAY_SERVICE_ID",
                 "RAILWAY_ENVIRONMENT_NAME", "RAILWAY_ENVIRONMENT"),
     "add a PostgreSQL database to the project and set DATABASE_URL=${{Postgres.DATABASE_URL}} "
     "on this service"),
    ("Render", ("RENDER", "RENDER_SERVICE_ID"),
     "create the service from the Blueprint (render.yaml fills DATABASE_URL from its database) "
     "or set DATABASE_URL to the database's internal URL"),
    ("the Docker image", ("SESSIONKEEPER_IMAGE",),
     "pass -e DATABASE_URL=postgresql://user:password@host:5432/db"),
)


def deployed_on(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(platform, what to set) when the environment says this is a deployed service: Railway's
    or Render's variables, or the image's marker (the Dockerfile sets SESSIONKEEPER_IMAGE)."""
    for name, variables, hint in _PLATFORMS:
        if any(environ.get(v) for v in variables):
            return name, hint
    return None


def require_database(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """ConfigError (one line) when DATABASE_URL is missing where an embedded PostgreSQL would
    lose everything with the container: on Railway, on Render, in the image. The embedded
    server stays the default on a laptop, for scripts/demo and in the tests."""
    if settings.database_url is not None:
        return
    found = deployed_on(os.environ if environ is None else environ)
    if found is not None:
        platform, hint = found
        raise ConfigError(f"DATABASE_URL is not set: on {platform} the embedded PostgreSQL "
                          f"would vanish with the container (and every login with it); {hint}")


async def database_url(settings: Settings) -> str:
    """The configured URL, or the URL of an embedded server started on demand."""
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        password = urlsplit(url).password
        register_secret(password)
        return url
    require_database(settings)
    if importlib.util.find_spec("pgserver") is None:
        raise ConfigError("DATABASE_URL is not set and the embedded PostgreSQL is not "
                          "installed (pip install 'sessionkeeper[embedded]'): set DATABASE_URL")
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


async def connect(url: str, connect_timeout: float = 10.0,
                  schema: str = DEFAULT_SCHEMA) -> asyncpg.Connection:
    """One connection on our schema, with errors turned into one clear line."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            url, timeout=connect_timeout, server_settings=server_settings(schema))
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
    read_only: bool = False,
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the configured (or embedded) database, its connections on our schema.
    migrate: apply pending migrations when SESSIONKEEPER_MIGRATE allows, else refuse a store
    behind the code (SchemaNotReady); read_only: never any DDL, only that check; migrate=False:
    neither (the caller knows the store is current)."""
    from app.vault import keyring  # noqa: PLC0415  (the vault builds on this module)

    keys = keyring.keys_from_settings(settings)  # a malformed key: one line, nothing opened
    url = await database_url(settings)
    # Fail fast with a clear line when the database is not there.
    conn = await connect(url, settings.db_connect_timeout, settings.db_schema)
    try:
        from app.store.migrate import load_migrations  # noqa: PLC0415
        from app.store.migrate import migrate as run_migrations  # noqa: PLC0415

        if migrate and settings.migrate and not read_only:
            await run_migrations(conn, schema=settings.db_schema)
        elif migrate or read_only:
            await require_current(conn, settings.db_schema, load_migrations())
    finally:
        await conn.close()
    # No query waits forever on a half-open connection: the client gives up after the
    # command timeout, and the server ends a statement that runs longer.
    pool_kwargs: dict[str, Any] = {
        "min_size": min_size, "max_size": max_size, "timeout": settings.db_connect_timeout,
        "command_timeout": settings.db_command_timeout,
        "server_settings": {"statement_timeout": str(int(settings.db_command_timeout * 1000)),
                            **server_settings(settings.db_schema)},
    }
    try:
        pool = await asyncpg.create_pool(url, **pool_kwargs)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {describe_url(url)}: {exc}"
        ) from None
    try:
        async with pool.acquire() as keys_conn:
            ring = await keyring.load_keyring(keys_conn, keys)
        with keyring.registered(pool, ring):
            yield pool
    finally:
        # A database that stopped answering must not hold the process: close gracefully
        # for a moment, then drop the connections.
        with anyio.move_on_after(POOL_CLOSE_S, shield=True) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()
