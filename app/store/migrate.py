"""Plain numbered SQL files from migrations/, applied in order under an advisory lock.

Safe to run twice and from two processes at once: the second waits for the lock, then finds
everything applied. Each file runs in its own transaction together with its record.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from app.errors import UserError
from app.log import get_logger
from app.store.locks import MIGRATION_LOCK
from app.store.repo import Conn
from app.store.schema import (
    DEFAULT_SCHEMA,
    MIGRATE_HINT,
    SchemaNotReady,
    StoreState,
    move_from_public,
    pending,
    pin_function_paths,
    quoted,
    read_state,
)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text, to notice a migration edited after it was applied."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """migrations/ beside the package (a checkout), else the copy inside the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "migrations", here / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise UserError("the migrations folder is missing from this installation")


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Every migration file, ordered by number."""
    found = []
    for path in sorted((folder or migrations_dir()).glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise UserError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise UserError("two migration files share a number")
    return found


async def migrate(conn: Conn, folder: Path | None = None,
                  schema: str = DEFAULT_SCHEMA) -> list[int]:
    """Apply pending migrations in `schema` (made if missing; a store still in public is moved
    there first); returns the versions applied by this call. Nothing is written, no DDL run,
    when the store is up to date: a role without DDL rights may call it then."""
    log = get_logger()
    wanted = load_migrations(folder)
    known = {m.version: m.name for m in wanted}
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
    try:
        state = await read_state(conn, schema, known)
        todo = pending(state, wanted)
        if state.legacy_in_public or todo:
            try:
                applied_now = await _apply(conn, schema, state, todo, wanted)
            except asyncpg.InsufficientPrivilegeError as exc:
                raise SchemaNotReady(
                    f"{len(todo) or 'no'} migration(s) pending in schema {schema!r} and this "
                    f"role may not apply them ({exc}): {MIGRATE_HINT}") from None
        if state.has_table:
            checksums = {r["version"]: r["checksum"] for r in await conn.fetch(
                f"SELECT version, checksum FROM {quoted(schema)}.schema_migrations")}
            for m in wanted:
                if checksums.get(m.version, m.checksum) != m.checksum:
                    log.warning("migration_changed_after_apply", version=m.version, name=m.name)
        unknown = sorted(state.versions - set(known))
        if unknown:
            log.warning("schema_newer_than_code", versions=unknown)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)
    return applied_now


async def _apply(conn: Conn, schema: str, state: StoreState, todo: list[Migration],
                 wanted: list[Migration]) -> list[int]:
    """The DDL part of migrate: move, make the schema and its record table, apply `todo`."""
    log = get_logger()
    if state.legacy_in_public:
        await move_from_public(conn, schema, wanted)
    elif not state.schema_exists:
        # Only when missing: an owner that was given the schema may not create one.
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted(schema)}")
    # Whatever the connection was opened with, unqualified names mean our schema from here.
    await conn.execute("SELECT set_config('search_path', $1, false)", quoted(schema))
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version integer PRIMARY KEY,
               name text NOT NULL,
               checksum text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    applied_now: list[int] = []
    for m in todo:
        if m.version in done:  # recorded in public before the move
            continue
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version, m.name, m.checksum,
            )
        applied_now.append(m.version)
        log.info("migration_applied", version=m.version, name=m.name, schema=schema)
    await pin_function_paths(conn, schema)
    return applied_now
