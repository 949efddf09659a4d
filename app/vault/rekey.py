"""Re-seal a store under a new vault key, online, in batches, resumable.

`sessionkeeper rekey` walks every session: chunk and list object rows sealed with any other
key are opened and sealed again with the new one (their addresses do not change: the store's
addressing secret stays, so nothing is uploaded twice); sealed manifests likewise; plaintext
generations (written before the store had a key) are converted: each chunk is addressed by
HMAC and sealed, the manifest rewritten as format 3, and the plaintext rows are collected once
nothing names them. The state is the rows themselves: a rekey that is killed is resumed by
running it again. Each row is updated only if it is still what was read, so a daemon that
snapshots meanwhile (with the new key, and the old one as SESSIONKEEPER_ENCRYPTION_KEY_OLD)
loses nothing. The old key's keyring row goes once nothing is sealed with it any more.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import asyncpg

from app.errors import CorruptSnapshot
from app.log import get_logger
from app.progress import NullProgress, ProgressSink
from app.snapshot.manifest import FORMAT_VERSION
from app.snapshot.sealing import (
    CIPHER,
    MANIFEST_MAGIC,
    SessionCodec,
    VaultKey,
    chunk_ad,
    key_id_of_manifest,
)
from app.store import repo
from app.store.repo import Conn
from app.vault import keyring
from app.vault.manifests import open_manifest, store_lists
from app.vault.options import BATCH_CHUNKS
from app.vault.retention import collect_garbage


@dataclass(slots=True)
class RekeyResult:
    """What one rekey did, and what is left (non-zero: run it again)."""

    key_id: str
    sessions: int = 0
    chunks_resealed: int = 0
    manifests_resealed: int = 0
    generations_converted: int = 0
    plaintext_chunks_collected: int = 0
    bytes_resealed: int = 0
    left_sealed_with_other_keys: int = 0
    left_plaintext_generations: int = 0
    keys_retired: list[str] = field(default_factory=list)
    duration_ms: int = 0

    def as_json(self) -> dict[str, Any]:
        """Plain fields for --json output and the log."""
        return asdict(self)


async def rekey_store(pool: asyncpg.Pool, new: VaultKey, old: VaultKey | None = None,
                      progress: ProgressSink | None = None) -> RekeyResult:
    """Re-seal every row of every session under `new` (see the module's docstring)."""
    progress = progress or NullProgress()
    started = time.monotonic()
    log = get_logger()
    keys = keyring.make_keyset(new, old)
    async with pool.acquire() as conn:
        ring = await keyring.load_keyring(conn, keys)
        sessions = [r["id"] for r in await conn.fetch("SELECT id FROM sessions ORDER BY id")]
    result = RekeyResult(new.id, sessions=len(sessions))
    log.info("rekey_started", key_id=new.id, old_key_id=old.id if old else None,
             sessions=len(sessions))
    with keyring.installed(ring):
        for session_id in sessions:
            async with pool.acquire() as conn:
                await _reseal_chunks(conn, session_id, new, result)
                await _reseal_manifests(conn, session_id, new, result)
                await _convert_plaintext(conn, session_id, result, progress)
        async with pool.acquire() as conn:
            result.left_sealed_with_other_keys = await conn.fetchval(
                "SELECT (SELECT count(*) FROM chunks WHERE codec LIKE $1 AND codec NOT LIKE $2)"
                " + (SELECT count(*) FROM snapshots WHERE substring(manifest FROM 1 FOR 4) = $3"
                " AND substring(manifest FROM 5 FOR 8) <> $4)",
                f"%+{CIPHER}-%", f"%{new.codec_suffix}", MANIFEST_MAGIC, bytes.fromhex(new.id))
            result.left_plaintext_generations = await conn.fetchval(
                "SELECT count(*) FROM snapshots WHERE substring(manifest FROM 1 FOR 4) <> $1",
                MANIFEST_MAGIC)
            if not result.left_sealed_with_other_keys:
                for key_id in [r["key_id"] for r in await conn.fetch(
                        "SELECT key_id FROM vault_keys WHERE key_id <> $1", new.id)]:
                    await keyring.forget_key(conn, key_id)
                    result.keys_retired.append(key_id)
    result.duration_ms = int((time.monotonic() - started) * 1000)
    log.info("rekey_completed", **result.as_json())
    return result


async def _reseal_chunks(conn: Conn, session_id: str, new: VaultKey,
                         result: RekeyResult) -> None:
    """Every chunk row of the session sealed with another key, sealed again with `new`:
    digest order, a batch at a time, each row updated only if still as read."""
    codec = keyring.active().codec(session_id)
    last = b""
    while True:
        rows = await conn.fetch(
            "SELECT digest, size, codec, data FROM chunks WHERE session_id = $1 "
            "AND digest > $2 AND codec LIKE $3 AND codec NOT LIKE $4 "
            "ORDER BY digest LIMIT $5",
            session_id, last, f"%+{CIPHER}-%", f"%{new.codec_suffix}", BATCH_CHUNKS)
        if not rows:
            return
        last = bytes(rows[-1]["digest"])

        def reseal(rows: list[asyncpg.Record] = rows) -> list[tuple[bytes, str, str, bytes]]:
            out = []
            for r in rows:
                digest = bytes(r["digest"])
                inner, data = codec.unseal(r["codec"], r["data"], r["size"], digest)
                sealed_codec = inner + new.codec_suffix
                out.append((digest, r["codec"], sealed_codec,
                            new.seal(bytes(data), chunk_ad(session_id, digest, sealed_codec,
                                                           r["size"]))))
            return out

        updates = await anyio.to_thread.run_sync(reseal)
        status = await conn.execute(
            """UPDATE chunks SET codec = t.new_codec, data = t.data, stored_size = length(t.data)
               FROM unnest($2::bytea[], $3::text[], $4::text[], $5::bytea[])
                    AS t(digest, old_codec, new_codec, data)
               WHERE chunks.session_id = $1 AND chunks.digest = t.digest
                 AND chunks.codec = t.old_codec""",
            session_id, [u[0] for u in updates], [u[1] for u in updates],
            [u[2] for u in updates], [u[3] for u in updates])
        result.chunks_resealed += int(status.rsplit(maxsplit=1)[-1])
        result.bytes_resealed += sum(len(u[3]) for u in updates)


async def _reseal_manifests(conn: Conn, session_id: str, new: VaultKey,
                            result: RekeyResult) -> None:
    """Sealed manifests of the session under another key, sealed again with `new`."""
    ring = keyring.active()
    rows = await conn.fetch(
        "SELECT generation, manifest, manifest_sha256 FROM snapshots WHERE session_id = $1 "
        "AND substring(manifest FROM 1 FOR 4) = $2 AND substring(manifest FROM 5 FOR 8) <> $3",
        session_id, MANIFEST_MAGIC, bytes.fromhex(new.id))
    writer = ring.codec(session_id)
    for r in rows:
        stored = bytes(r["manifest"])
        sealed = writer.seal_manifest(SessionCodec.open_manifest(session_id, stored, ring.keys))
        status = await conn.execute(
            "UPDATE snapshots SET manifest = $3, manifest_sha256 = $4 WHERE session_id = $1 "
            "AND generation = $2 AND manifest_sha256 = $5",
            session_id, r["generation"], sealed, hashlib.sha256(sealed).digest(),
            r["manifest_sha256"])
        result.manifests_resealed += int(status.rsplit(maxsplit=1)[-1])


async def _convert_plaintext(conn: Conn, session_id: str, result: RekeyResult,
                             progress: ProgressSink) -> None:
    """Plaintext generations of the session re-addressed and sealed; then the plaintext
    rows nothing names any more are collected."""
    rows = await conn.fetch(
        "SELECT generation FROM snapshots WHERE session_id = $1 "
        "AND substring(manifest FROM 1 FOR 4) <> $2 ORDER BY generation",
        session_id, MANIFEST_MAGIC)
    if not rows:
        return
    log = get_logger(session_id=session_id)
    for r in rows:
        try:
            if await _convert_generation(conn, session_id, r["generation"], progress):
                result.generations_converted += 1
        except CorruptSnapshot as exc:
            log.error("rekey_generation_unreadable", generation=r["generation"],
                      reason=str(exc))
    collected = await collect_garbage(conn, session_id)
    if collected is None:
        log.info("rekey_gc_deferred", note="a writer holds the session; the plaintext rows "
                 "go at its next prune or the next rekey")
    else:
        result.plaintext_chunks_collected += collected


async def _convert_generation(conn: Conn, session_id: str, generation: int,
                              progress: ProgressSink) -> bool:
    """One plaintext generation re-addressed and sealed (False: changed meanwhile)."""
    ring = keyring.active()
    async with repo.chunk_lock_shared(conn, session_id):  # no GC until the manifest names them
        found = await repo.fetch_manifest(conn, session_id, generation)
        if found is None or key_id_of_manifest(found[0]) is not None:
            return False
        stored, old_sha = found
        if hashlib.sha256(stored).digest() != old_sha:
            raise CorruptSnapshot(f"generation {generation}: manifest checksum mismatch")
        opened = await open_manifest(conn, session_id, stored)
        source = ring.reader(session_id, opened.manifest)
        target = ring.codec(session_id)
        sizes = opened.manifest.chunk_sizes()
        digests = list(sizes)
        renamed: dict[bytes, bytes] = {}
        progress.start(f"rekey {session_id} generation {generation}", len(digests))
        for start in range(0, len(digests), BATCH_CHUNKS):
            window = digests[start : start + BATCH_CHUNKS]
            chunks = await repo.fetch_chunks(conn, session_id, window)

            def convert(window: list[bytes] = window,
                        chunks: dict[bytes, repo.StoredChunk] = chunks,
                        ) -> list[tuple[bytes, int, str, bytes]]:
                out = []
                for d in window:
                    chunk = chunks.get(d)
                    if chunk is None:
                        raise CorruptSnapshot(f"chunk {d.hex()[:12]} is missing")
                    raw = source.decode(chunk.codec, chunk.data, sizes[d], d, chunk.base)
                    ours = renamed[d] = target.address(raw)
                    out.append((ours, len(raw), *target.encode(raw, ours)))
                return out

            rows = await anyio.to_thread.run_sync(convert)
            await repo.insert_chunks(conn, session_id, rows)
            progress.advance(len(window))
        manifest = opened.manifest.readdressed(renamed, target.addressing)
        packed = manifest.pack(3, target.address)
        await store_lists(conn, session_id, packed, target)
        sealed = target.seal_manifest(packed.data)
        status = await conn.execute(
            "UPDATE snapshots SET manifest = $3, manifest_sha256 = $4, content_digest = $5, "
            "format_version = $6 WHERE session_id = $1 AND generation = $2 "
            "AND manifest_sha256 = $7",
            session_id, generation, sealed, hashlib.sha256(sealed).digest(),
            manifest.content_digest(), FORMAT_VERSION, old_sha)
    return status.endswith(" 1")
