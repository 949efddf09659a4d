"""Keep the newest N generations; collect chunks that no generation references.

Garbage collection takes the session's chunk lock exclusively and without waiting: while any
upload or restore of the session holds it shared, collection is deferred, so a chunk an
unfinished snapshot counted on is never removed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from app.errors import CorruptSnapshot
from app.log import get_logger
from app.store import repo
from app.store.repo import Conn
from app.vault import keyring
from app.vault.manifests import open_manifest

_DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What one prune did."""

    session_id: str
    kept: list[int]
    deleted_generations: list[int]
    chunks_deleted: int
    gc_deferred: bool

    def as_json(self) -> dict[str, Any]:
        """Plain fields for --json output."""
        return asdict(self)


async def collect_garbage(conn: Conn, session_id: str) -> int | None:
    """Delete unreferenced chunks; None when a writer holds the lock (try again later)."""
    async with conn.transaction():
        if not await repo.try_chunk_lock_exclusive(conn, session_id):
            return None
        referenced: set[bytes] = set()
        for packed in await repo.all_manifests(conn, session_id):
            try:
                referenced |= (await open_manifest(conn, session_id, packed)).referenced()
            except CorruptSnapshot:
                # A manifest we cannot read may still name chunks: delete nothing.
                get_logger(session_id=session_id).error("gc_skipped_unreadable_manifest")
                return 0
        # A kept delta keeps its base (a base is stored whole: one step is enough).
        referenced |= {base for d, base in (await repo.delta_bases(conn, session_id)).items()
                       if d in referenced}
        orphans = [d async for d in repo.iter_stored_digests(conn, session_id)
                   if d not in referenced]
        deleted = 0
        for i in range(0, len(orphans), _DELETE_BATCH):
            deleted += await repo.delete_chunks(conn, session_id, orphans[i : i + _DELETE_BATCH])
        return deleted


# Runs inside prune's transaction, the session's row locked, before anything is deleted; it
# raises to stop the prune (the CLI's check that no process holds the session's lease).
PruneGuard = Callable[[Conn], Awaitable[None]]


@keyring.with_keyring
async def prune(pool: asyncpg.Pool, session_id: str, keep: int,
                guard: PruneGuard | None = None) -> PruneResult:
    """Delete all but the newest `keep` generations, then collect their chunks."""
    log = get_logger(session_id=session_id)
    async with pool.acquire() as conn:
        async with conn.transaction():
            if guard is not None:
                await repo.lock_session(conn, session_id)
                await guard(conn)
            infos = await repo.list_generations(conn, session_id)
            kept = [g.generation for g in infos[:keep]]
            # The newest logged-in generation stays even past N: QR-state snapshots never
            # push it out, so there is always a login to restore.
            if infos and all(g.login_state == "qr" for g in infos[:keep]):
                kept += [g.generation for g in infos[keep:] if g.login_state != "qr"][:1]
            doomed = [g.generation for g in infos if g.generation not in kept]
            if doomed:
                await repo.delete_generations(conn, session_id, doomed)
        deleted = await collect_garbage(conn, session_id)
    result = PruneResult(session_id, kept, doomed, deleted or 0, deleted is None)
    if doomed or deleted:
        log.info("snapshots_pruned", kept=kept, deleted_generations=doomed,
                 chunks_deleted=deleted or 0)
    if deleted is None:
        log.info("gc_deferred", reason="chunk lock held by an upload or restore")
    return result
