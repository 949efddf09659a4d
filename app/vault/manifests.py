"""Reading and writing manifests together with their list objects."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import anyio

from app.errors import CorruptSnapshot, NotFound
from app.snapshot.codec import Decoder, Encoder
from app.snapshot.manifest import Manifest, ManifestDoc, PackedManifest
from app.store import repo
from app.store.repo import Conn


@dataclass(frozen=True, slots=True)
class OpenManifest:
    """A checked manifest and the list objects it names."""

    manifest: Manifest
    lists: dict[bytes, bytes]
    data: bytes  # the serialised manifest as stored

    def referenced(self) -> set[bytes]:
        """Every stored object the generation needs: chunks and list objects."""
        return self.manifest.digests() | set(self.lists)


async def open_manifest(conn: Conn, session_id: str, data: bytes) -> OpenManifest:
    """Parse a manifest and fetch and check its list objects."""
    doc = ManifestDoc.parse(data)
    lists: dict[bytes, bytes] = {}
    if doc.list_refs:
        stored = await repo.fetch_chunks(conn, session_id, list(doc.list_refs))
        decoder = Decoder()

        def decode() -> None:
            for digest, size in doc.list_refs.items():
                chunk = stored.get(digest)
                if chunk is None:
                    raise CorruptSnapshot(f"list object {digest.hex()[:12]} is missing")
                lists[digest] = decoder.decode(chunk.codec, chunk.data, size, digest)

        await anyio.to_thread.run_sync(decode)
    return OpenManifest(doc.resolve(lists), lists, data)


async def load_manifest(conn: Conn, session_id: str, generation: int) -> OpenManifest:
    """The checked manifest of a committed generation."""
    found = await repo.fetch_manifest(conn, session_id, generation)
    if found is None:
        raise NotFound(f"session {session_id!r} has no generation {generation}")
    data, expected = found
    if hashlib.sha256(data).digest() != expected:
        raise CorruptSnapshot(f"generation {generation}: manifest checksum mismatch")
    return await open_manifest(conn, session_id, data)


async def store_lists(conn: Conn, session_id: str, packed: PackedManifest, level: int) -> int:
    """Store the list objects the database lacks; returns the bytes written."""
    if not packed.lists:
        return 0
    present = await repo.existing_digests(conn, session_id, list(packed.lists))
    encoder = Encoder(level)
    rows = [(d, len(raw), *encoder.encode(raw)) for d, raw in packed.lists.items()
            if d not in present]
    if rows:
        await repo.insert_chunks(conn, session_id, rows)
    return sum(len(r[3]) for r in rows)
