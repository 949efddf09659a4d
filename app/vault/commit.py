"""Committing a generation: the one write that makes a snapshot visible."""

from __future__ import annotations

import hashlib
import time

import asyncpg

from app.errors import CorruptSnapshot, LeaseHeld, LeaseLost
from app.snapshot.manifest import FORMAT_VERSION, Manifest
from app.store import repo
from app.store.leases import FENCED_SQLSTATE
from app.store.repo import Conn
from app.vault import keyring
from app.vault.delta_bases import DeltaBases
from app.vault.manifests import store_lists


async def commit_manifest(
    conn: Conn, session_id: str, manifest: Manifest, *, level: int, kind: str,
    login_state: str | None, chunks_new: int, bytes_uploaded: int, started: float,
    lease_token: int | None = None, force: bool = False, bases: DeltaBases | None = None,
) -> tuple[int, int]:
    """Store the list objects, check every chunk is stored, insert the generation.

    Returns (generation, bytes uploaded including the manifest and its list objects).

    The caller holds the session's chunk lock shared, so nothing it counted on can vanish;
    the count is a last check that the generation never names a missing chunk. `bases`
    (the previous generation's) lets new list objects be stored as deltas. With a lease
    token, the database refuses the insert if a newer owner exists (LeaseLost); without one,
    while any process holds the session's lease (LeaseHeld), unless force.
    """
    await keyring.check_installed(conn)
    codec = keyring.active().codec(session_id, level=level)
    if manifest.addressing != codec.addressing:
        raise CorruptSnapshot(f"a manifest addressed by {manifest.addressing} cannot be "
                              f"committed to a store addressed by {codec.addressing}")
    packed = manifest.pack(level, codec.address)
    stored = codec.seal_manifest(packed.data)
    uploaded = bytes_uploaded + len(stored)
    uploaded += await store_lists(conn, session_id, packed, codec, manifest, bases)
    # One set of every object the generation names (38,000 for 500 MB): made once.
    objects = manifest.digests()
    chunks_total = len(objects)
    objects.update(packed.lists)
    distinct = list(objects)
    del objects
    try:
        return await _insert(conn, session_id, manifest, stored, distinct, chunks_total,
                             uploaded, kind, login_state, chunks_new, started, lease_token,
                             force)
    except asyncpg.PostgresError as exc:
        if getattr(exc, "sqlstate", None) == FENCED_SQLSTATE:
            raise LeaseLost(f"session {session_id!r}: {exc}") from None
        if getattr(exc, "sqlstate", None) == repo.LEASE_HELD_SQLSTATE:
            raise LeaseHeld(str(exc)) from None
        raise


async def _insert(
    conn: Conn, session_id: str, manifest: Manifest, stored: bytes,
    distinct: list[bytes], chunks_total: int, uploaded: int, kind: str,
    login_state: str | None, chunks_new: int, started: float, lease_token: int | None,
    force: bool,
) -> tuple[int, int]:
    async with conn.transaction():
        if force:
            await repo.force_past_lease(conn)
        present, bytes_stored = await repo.present_and_stored(conn, session_id, distinct)
        if present != len(distinct):
            raise CorruptSnapshot(
                f"{len(distinct) - present} chunks are missing; nothing committed"
            )
        generation, _ = await repo.commit_generation(conn, {
            "session_id": session_id, "kind": kind, "login_state": login_state,
            "format_version": FORMAT_VERSION, "manifest": stored,
            "manifest_sha256": hashlib.sha256(stored).digest(),
            "content_digest": manifest.content_digest(), "files": len(manifest.files),
            "bytes_raw": manifest.bytes_raw,
            "bytes_stored": bytes_stored,
            "bytes_uploaded": uploaded, "chunks_total": chunks_total,
            "chunks_new": chunks_new, "chunks_reused": chunks_total - chunks_new,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "lease_token": lease_token,
        })
    return generation, uploaded
