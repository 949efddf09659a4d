"""SQL for sessions, snapshot generations and chunks. Every query of the vault lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from app.log import get_logger
from app.store.locks import CHUNK_LOCK_CLASS

# A plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy
# What the snapshot trigger raises for a write without a lease token while a process holds the
# session's lease (migrations/0006_manual_write_guard.sql).
LEASE_HELD_SQLSTATE = "SK002"


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk row as stored; a delta's base row comes with it (address, raw size, codec,
    stored bytes)."""

    digest: bytes
    size: int
    codec: str
    data: bytes
    base: tuple[bytes, int, str, bytes] | None = None


@dataclass(frozen=True, slots=True)
class GenerationInfo:
    """One committed generation, without its manifest."""

    session_id: str
    generation: int
    created_at: datetime
    kind: str
    login_state: str | None
    content_digest: bytes
    files: int
    bytes_raw: int
    bytes_stored: int
    bytes_uploaded: int
    chunks_total: int
    chunks_new: int
    chunks_reused: int
    duration_ms: int
    # Restored, it asked for a QR code although captured logged in: never restored again.
    restore_failed_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """Plain fields for --json output."""
        return {
            "session_id": self.session_id, "generation": self.generation,
            "created_at": self.created_at.isoformat(), "kind": self.kind,
            "login_state": self.login_state, "files": self.files,
            "bytes_raw": self.bytes_raw, "bytes_stored": self.bytes_stored,
            "bytes_uploaded": self.bytes_uploaded, "chunks_total": self.chunks_total,
            "chunks_new": self.chunks_new, "chunks_reused": self.chunks_reused,
            "duration_ms": self.duration_ms,
            "restore_failed": self.restore_failed_at is not None,
        }


_GEN_COLUMNS = (
    "session_id, generation, created_at, kind, login_state, content_digest, files, bytes_raw, "
    "bytes_stored, bytes_uploaded, chunks_total, chunks_new, chunks_reused, duration_ms, "
    "restore_failed_at"
)


def _gen(row: asyncpg.Record) -> GenerationInfo:
    return GenerationInfo(**dict(row))


@asynccontextmanager
async def chunk_lock_shared(conn: Conn, session_id: str) -> AsyncIterator[None]:
    """Hold off garbage collection of the session's chunks while uploading or restoring."""
    await conn.execute("SELECT pg_advisory_lock_shared($1, hashtext($2))",
                       CHUNK_LOCK_CLASS, session_id)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock_shared($1, hashtext($2))",
                           CHUNK_LOCK_CLASS, session_id)


async def try_chunk_lock_exclusive(conn: Conn, session_id: str) -> bool:
    """Take the session's chunk lock for garbage collection, without waiting (xact-scoped)."""
    got: bool = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                                    CHUNK_LOCK_CLASS, session_id)
    return got


async def ensure_session(conn: Conn, session_id: str) -> None:
    """Create the session row if it is new."""
    await conn.execute("INSERT INTO sessions (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
                       session_id)


async def lock_session(conn: Conn, session_id: str) -> None:
    """Lock the session's row until the transaction ends: no lease can be taken (or renewed)
    meanwhile, so a check of its holder stays true for what the transaction does next."""
    await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id)


async def force_past_lease(conn: Conn) -> None:
    """Let this transaction insert a generation without a lease token while another process
    holds the session's lease (the trigger of migrations/0006 reads the setting)."""
    await conn.execute("SET LOCAL sessionkeeper.force = on")


async def session_exists(conn: Conn, session_id: str) -> bool:
    """True if the session is registered."""
    found: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1)",
                                      session_id)
    return found


async def list_sessions(conn: Conn) -> list[dict[str, Any]]:
    """Every session with its generation count, newest generation and stored bytes."""
    rows = await conn.fetch(
        """SELECT s.id, s.created_at, s.updated_at, s.registered, s.target, s.owner,
                  (s.lease_expires_at > now()) AS leased,
                  count(g.generation) AS generations, max(g.generation) AS latest_generation,
                  max(g.created_at) AS latest_at,
                  (SELECT coalesce(sum(stored_size), 0) FROM chunks c
                    WHERE c.session_id = s.id) AS bytes_stored
             FROM sessions s LEFT JOIN snapshots g ON g.session_id = s.id
            GROUP BY s.id ORDER BY s.id"""
    )
    return [
        {
            "session_id": r["id"], "generations": r["generations"],
            "latest_generation": r["latest_generation"],
            "latest_at": r["latest_at"].isoformat() if r["latest_at"] else None,
            "bytes_stored": int(r["bytes_stored"]),
            "created_at": r["created_at"].isoformat(),
            "registered": r["registered"], "target": r["target"],
            "owner": r["owner"] if r["leased"] else None,
        }
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class RegisteredSession:
    """A registered session as the status board shows it: lease holder, generations kept and
    the newest generation."""

    session_id: str
    holder: str | None
    generations: int
    latest: GenerationInfo | None


async def registered_sessions(conn: Conn) -> list[RegisteredSession]:
    """Every registered session with its newest generation, in one query (the status page
    asks every few seconds: no per-session round trip, no scan of the chunk table)."""
    gen_columns = ", ".join(f"g.{c.strip()}" for c in _GEN_COLUMNS.split(","))
    rows = await conn.fetch(
        f"""SELECT s.id AS sid,
                   CASE WHEN s.lease_expires_at > now() THEN s.owner END AS holder,
                   (SELECT count(*) FROM snapshots n WHERE n.session_id = s.id) AS kept,
                   {gen_columns}
              FROM sessions s
              LEFT JOIN LATERAL (
                   SELECT {_GEN_COLUMNS} FROM snapshots
                    WHERE session_id = s.id ORDER BY generation DESC LIMIT 1) g ON true
             WHERE s.registered ORDER BY s.id"""
    )
    found = []
    for r in rows:
        fields = {k: v for k, v in dict(r).items() if k not in ("sid", "holder", "kept")}
        latest = GenerationInfo(**fields) if r["generation"] is not None else None
        found.append(RegisteredSession(r["sid"], r["holder"], int(r["kept"]), latest))
    return found


async def list_generations(conn: Conn, session_id: str) -> list[GenerationInfo]:
    """Committed generations of a session, newest first."""
    rows = await conn.fetch(
        f"SELECT {_GEN_COLUMNS} FROM snapshots WHERE session_id = $1 ORDER BY generation DESC",
        session_id,
    )
    return [_gen(r) for r in rows]


async def latest_generation(conn: Conn, session_id: str) -> GenerationInfo | None:
    """The newest committed generation, if any."""
    row = await conn.fetchrow(
        f"SELECT {_GEN_COLUMNS} FROM snapshots WHERE session_id = $1 "
        "ORDER BY generation DESC LIMIT 1",
        session_id,
    )
    return _gen(row) if row else None


async def fetch_manifest(
    conn: Conn, session_id: str, generation: int
) -> tuple[bytes, bytes] | None:
    """(manifest bytes, their stored SHA-256) of one generation."""
    row = await conn.fetchrow(
        "SELECT manifest, manifest_sha256 FROM snapshots WHERE session_id = $1 AND generation = $2",
        session_id, generation,
    )
    return (bytes(row["manifest"]), bytes(row["manifest_sha256"])) if row else None


async def existing_digests(
    conn: Conn, session_id: str, digests: Sequence[bytes]
) -> set[bytes]:
    """The subset of digests already stored for the session."""
    if not digests:
        return set()
    rows = await conn.fetch(
        "SELECT digest FROM chunks WHERE session_id = $1 AND digest = ANY($2::bytea[])",
        session_id, list(digests),
    )
    return {bytes(r["digest"]) for r in rows}


_CHUNK_COLUMNS = ("session_id", "digest", "size", "stored_size", "codec", "data", "base")


async def insert_chunks(
    conn: Conn, session_id: str, chunks: Sequence[tuple[bytes, int, str, bytes]],
    bases: Mapping[bytes, bytes] | None = None,
) -> set[bytes]:
    """Store (digest, raw size, codec, data) rows (a delta's base named in `bases`); a chunk
    already stored is left alone. Returns the digests this call actually stored.

    The rows go in by binary COPY, about twice as fast as an INSERT over arrays (which
    PostgreSQL has to take apart first). COPY knows no ON CONFLICT: when one of them is
    stored already (left by an interrupted snapshot, or named by an older generation than
    the one the caller compared with), the batch goes in again the slow way. No lookup comes
    first: during a first snapshot the planner still takes the table for empty, and a lookup
    per batch would read it all each time."""
    if not chunks:
        return set()
    bases = bases or {}
    try:
        async with conn.transaction():  # a savepoint inside a caller's transaction
            await conn.copy_records_to_table(
                "chunks", columns=_CHUNK_COLUMNS,
                records=[(session_id, d, size, len(data), codec, data, bases.get(d))
                         for d, size, codec, data in chunks])
    except asyncpg.UniqueViolationError:
        return await _insert_new_chunks(conn, session_id, chunks, bases)
    return {c[0] for c in chunks}


async def _insert_new_chunks(
    conn: Conn, session_id: str, chunks: Sequence[tuple[bytes, int, str, bytes]],
    bases: Mapping[bytes, bytes],
) -> set[bytes]:
    rows = await conn.fetch(
        """INSERT INTO chunks (session_id, digest, size, stored_size, codec, data, base)
           SELECT $1, d, s, ss, c, x, b
           FROM unnest($2::bytea[], $3::int[], $4::int[], $5::text[], $6::bytea[],
                       $7::bytea[]) AS t(d, s, ss, c, x, b)
           ON CONFLICT (session_id, digest) DO NOTHING
           RETURNING digest""",
        session_id, [c[0] for c in chunks], [c[1] for c in chunks],
        [len(c[3]) for c in chunks], [c[2] for c in chunks], [c[3] for c in chunks],
        [bases.get(c[0]) for c in chunks],
    )
    return {bytes(r["digest"]) for r in rows}


async def delta_bases(conn: Conn, session_id: str) -> dict[bytes, bytes]:
    """Every delta chunk of the session and its base (few: only changed chunks are)."""
    rows = await conn.fetch("SELECT digest, base FROM chunks WHERE session_id = $1 "
                            "AND base IS NOT NULL", session_id)
    return {bytes(r["digest"]): bytes(r["base"]) for r in rows}


async def refresh_chunk_stats(conn: Conn) -> bool:
    """ANALYZE the chunk table's keys, so the planner knows it is big after a big upload
    (autovacuum gets there later; until then a restore's lookups run on a guess). False when
    the role may not: a least-privilege role does not own the table, and PostgreSQL would only
    warn and skip)."""
    if not await conn.fetchval("SELECT pg_has_role(relowner, 'USAGE') FROM pg_catalog.pg_class "
                               "WHERE oid = 'chunks'::regclass"):
        get_logger().debug("chunk_stats_skipped", reason="not the table's owner")
        return False
    try:
        await conn.execute("ANALYZE chunks (session_id, digest)")
    except asyncpg.PostgresError as exc:
        get_logger().debug("chunk_stats_skipped", reason=str(exc)[:200])
        return False
    return True


async def fetch_chunks(
    conn: Conn, session_id: str, digests: Sequence[bytes]
) -> dict[bytes, StoredChunk]:
    """Stored chunks by digest, each delta with its base row (missing ones are simply
    absent)."""
    rows = await conn.fetch(
        "SELECT c.digest, c.size, c.codec, c.data, b.digest AS b_digest, b.size AS b_size, "
        "b.codec AS b_codec, b.data AS b_data FROM chunks c "
        "LEFT JOIN chunks b ON b.session_id = c.session_id AND b.digest = c.base "
        "WHERE c.session_id = $1 AND c.digest = ANY($2::bytea[])",
        session_id, list(set(digests)),
    )
    return {
        bytes(r["digest"]): StoredChunk(
            bytes(r["digest"]), r["size"], r["codec"], r["data"],
            None if r["b_digest"] is None
            else (bytes(r["b_digest"]), r["b_size"], r["b_codec"], r["b_data"]))
        for r in rows
    }


def _hex_literal(data: bytes) -> str:
    """A bytea expression for `data` with no quote or backslash in it (COPY takes no
    parameters, and its text must not depend on standard_conforming_strings)."""
    return f"decode('{data.hex()}', 'hex')"


async def copy_chunks(
    conn: Conn, session_id: str, digests: Sequence[bytes],
    sink: Callable[[bytes], Coroutine[Any, Any, None]],
) -> None:
    """Stream the stored rows of the given distinct chunks to `sink` as a binary COPY of
    (position in `digests`, codec, data, and a delta's base row: its digest, size, codec
    and data, NULL for a chunk stored whole); rows come in any order and missing chunks are
    simply absent (app/store/copy_binary.py reads it)."""
    if not digests:
        return
    packed = b"".join(digests)
    if len(packed) != 32 * len(digests):
        raise ValueError("chunk digests are 32 bytes")
    session = f"convert_from({_hex_literal(session_id.encode())}, 'UTF8')"
    query = (
        "SELECT w.n, c.codec, c.data, b.digest, b.size, b.codec, b.data"
        f" FROM (SELECT n, substring(x.b FROM n * 32 + 1 FOR 32) AS d"
        f"       FROM (SELECT {_hex_literal(packed)} AS b) x,"
        f"            generate_series(0, {len(digests) - 1}) n) w"
        f" JOIN chunks c ON c.session_id = {session} AND c.digest = w.d"
        " LEFT JOIN chunks b ON b.session_id = c.session_id AND b.digest = c.base"
    )
    await conn.copy_from_query(query, output=sink, format="binary")


async def present_and_stored(conn: Conn, session_id: str,
                             digests: Sequence[bytes]) -> tuple[int, int]:
    """How many of the (distinct) digests are stored, and their stored bytes: one pass."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(stored_size), 0) AS bytes FROM chunks "
        "WHERE session_id = $1 AND digest = ANY($2::bytea[])", session_id, digests)
    assert row is not None
    return int(row["n"]), int(row["bytes"])


async def commit_generation(conn: Conn, values: dict[str, Any]) -> tuple[int, Any]:
    """Insert a generation row with the next number; must run inside a transaction."""
    generation: int = await conn.fetchval(
        "UPDATE sessions SET next_generation = next_generation + 1, updated_at = now() "
        "WHERE id = $1 RETURNING next_generation - 1",
        values["session_id"],
    )
    values = {**values, "generation": generation}
    cols = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    created_at = await conn.fetchval(
        f"INSERT INTO snapshots ({cols}) VALUES ({params}) RETURNING created_at",
        *values.values(),
    )
    return generation, created_at


async def delete_generations(
    conn: Conn, session_id: str, generations: Sequence[int]
) -> int:
    """Delete the given generations; returns how many went."""
    result: str = await conn.execute(
        "DELETE FROM snapshots WHERE session_id = $1 AND generation = ANY($2::bigint[])",
        session_id, list(generations),
    )
    return int(result.rsplit(maxsplit=1)[-1])


async def all_manifests(conn: Conn, session_id: str) -> list[bytes]:
    """Manifests of every committed generation of a session."""
    rows = await conn.fetch("SELECT manifest FROM snapshots WHERE session_id = $1", session_id)
    return [bytes(r["manifest"]) for r in rows]


async def iter_stored_digests(
    conn: Conn, session_id: str, prefetch: int = 5000
) -> AsyncIterator[bytes]:
    """Every chunk digest stored for a session, read through a cursor (inside a transaction):
    memory stays bounded however many chunks the session has."""
    async for row in conn.cursor("SELECT digest FROM chunks WHERE session_id = $1",
                                 session_id, prefetch=prefetch):
        yield bytes(row["digest"])


async def delete_chunks(conn: Conn, session_id: str, digests: Sequence[bytes]) -> int:
    """Delete chunks by digest; returns how many went."""
    result: str = await conn.execute(
        "DELETE FROM chunks WHERE session_id = $1 AND digest = ANY($2::bytea[])",
        session_id, list(digests),
    )
    return int(result.rsplit(maxsplit=1)[-1])


async def delete_session(conn: Conn, session_id: str) -> bool:
    """Delete a session with all its generations and chunks."""
    result: str = await conn.execute("DELETE FROM sessions WHERE id = $1", session_id)
    return result != "DELETE 0"


async def has_logged_in_generation(conn: Conn, session_id: str) -> bool:
    """True if a logged-in generation exists (ready, or unlabelled manual), not taken on a QR
    page and not marked logged out."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM snapshots WHERE session_id = $1 "
        "AND (login_state IS NULL OR login_state = 'ready') AND restore_failed_at IS NULL)",
        session_id)
    return found


async def mark_logged_out(conn: Conn, session_id: str, owner: str,
                          lease_token: int) -> list[int]:
    """Label every logged-in generation of a session `logged_out` (the phone unlinked the
    device: none of them logs in any more), while `owner` holds the lease with that token.
    Returns the generations marked."""
    rows = await conn.fetch(
        """UPDATE snapshots SET login_state = 'logged_out'
            WHERE session_id = $1 AND (login_state IS NULL OR login_state = 'ready')
              AND EXISTS (SELECT 1 FROM sessions
                           WHERE id = $1 AND owner = $2 AND lease_token = $3)
        RETURNING generation""",
        session_id, owner, lease_token)
    return sorted(int(r["generation"]) for r in rows)


async def mark_restore_failed(conn: Conn, session_id: str, generation: int, owner: str,
                              token: int) -> bool:
    """Mark a generation that came up asking for a QR code although it was captured logged
    in; restore skips it from now on. Fenced by the lease (owner and token)."""
    done: str = await conn.execute(
        """UPDATE snapshots s SET restore_failed_at = now()
             FROM sessions x
            WHERE s.session_id = $1 AND s.generation = $2 AND x.id = s.session_id
              AND x.owner = $3 AND x.lease_token = $4""",
        session_id, generation, owner, token,
    )
    return done != "UPDATE 0"
