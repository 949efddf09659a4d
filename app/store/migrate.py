"""Plain numbered SQL files from migrations/, applied in order under an advisory lock.

Safe to run twice and from two processes at once: the second waits for the lock, then finds
everything applied. Each file runs in its own transaction together with its record.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from app.errors import UserError
from app.log import get_logger
from app.store.locks import MIGRATION_LOCK
from app.store.repo import Conn

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


async def migrate(conn: Conn, folder: Path | None = None) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    log = get_logger()
    wanted = load_migrations(folder)
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {r["version"]: r["checksum"] for r in rows}
        for m in wanted:
            if m.version in done:
                if done[m.version] != m.checksum:
                    log.warning("migration_changed_after_apply", version=m.version, name=m.name)
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            applied_now.append(m.version)
            log.info("migration_applied", version=m.version, name=m.name)
        unknown = sorted(set(done) - {m.version for m in wanted})
        if unknown:
            log.warning("schema_newer_than_code", versions=unknown)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)
    return applied_now
