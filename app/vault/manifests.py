"""Reading and writing manifests together with their list objects."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import anyio
import zstandard

from app.errors import CorruptSnapshot, NotFound
from app.snapshot.codec import MAX_OBJECT_BYTES, declared_size
from app.snapshot.manifest import Manifest, ManifestDoc, PackedManifest
from app.snapshot.sealing import SessionCodec
from app.store import repo
from app.store.repo import Conn
from app.vault import keyring
from app.vault.delta_bases import DeltaBases, encode_against


@dataclass(frozen=True, slots=True)
class OpenManifest:
    """A checked manifest and the list objects it names."""

    manifest: Manifest
    lists: dict[bytes, bytes]
    data: bytes  # the serialised manifest as stored (sealed in an encrypted store)
    plain: bytes  # the serialised manifest (zstd-compressed JSON)

    def referenced(self) -> set[bytes]:
        """Every stored object the generation needs: chunks and list objects."""
        return self.manifest.digests() | set(self.lists)


# What a manifest may hold. A logged-in WhatsApp profile keeps a few hundred to a few thousand
# files, a manifest row is at most about 1.3 KB of JSON (16 inline chunk references); these
# limits leave orders of magnitude of room and bound what a hostile manifest can make the
# parser allocate (each JSON value costs Python 30-70 bytes, so the structure is counted
# before json.loads).
MAX_MANIFEST_JSON = 64 * 1024 * 1024  # bytes of JSON once decompressed
MAX_MANIFEST_STORED = MAX_MANIFEST_JSON  # compressed, as stored or exported
MAX_MANIFEST_ENTRIES = 200_000  # files and folders
# Per entry a row is one list of at most 6 values, 2 of them strings.
_MAX_CONTAINERS = MAX_MANIFEST_ENTRIES + 16
_MAX_COMMAS = 8 * MAX_MANIFEST_ENTRIES + 16
_MAX_QUOTES = 6 * MAX_MANIFEST_ENTRIES + 64
_SCAN = 1024 * 1024


def check_manifest_size(data: bytes) -> None:
    """Refuse a manifest bigger than a real profile's, with one line, before it is parsed:
    the frame's declared size, then the JSON streamed and its values counted (a few KB of
    zstd can hold 32 MiB of `[],` that json.loads would turn into a gigabyte)."""
    what = "manifest"
    if len(data) > MAX_MANIFEST_STORED:
        raise CorruptSnapshot(f"{what}: {len(data)} bytes stored (at most "
                              f"{MAX_MANIFEST_STORED}): refused")
    declared = declared_size(data, what)
    if declared is not None and declared > MAX_MANIFEST_JSON:
        raise CorruptSnapshot(f"{what}: it declares {declared} bytes of JSON (at most "
                              f"{MAX_MANIFEST_JSON}): refused")
    total = containers = commas = quotes = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            while block := reader.read(_SCAN):
                total += len(block)
                containers += block.count(b"[") + block.count(b"{")
                commas += block.count(b",")
                quotes += block.count(b'"')
                if total > MAX_MANIFEST_JSON:
                    raise CorruptSnapshot(f"{what}: more than {MAX_MANIFEST_JSON} bytes of "
                                          "JSON: refused")
                if (containers > _MAX_CONTAINERS or commas > _MAX_COMMAS
                        or quotes > _MAX_QUOTES):
                    raise CorruptSnapshot(f"{what}: more values than "
                                          f"{MAX_MANIFEST_ENTRIES} entries can hold: refused")
    except zstandard.ZstdError as exc:
        raise CorruptSnapshot(f"manifest unreadable: {exc}") from None


def parse_manifest(data: bytes) -> ManifestDoc:
    """ManifestDoc.parse, within the limits above (entries, and every list object's size)."""
    check_manifest_size(data)
    doc = ManifestDoc.parse(data)
    entries = sum(len(part) for part in (doc.doc.get("files"), doc.doc.get("dirs"))
                  if isinstance(part, list))
    if entries > MAX_MANIFEST_ENTRIES:
        raise CorruptSnapshot(f"manifest: {entries} entries (at most {MAX_MANIFEST_ENTRIES}): "
                              "refused")
    for digest, size in doc.list_refs.items():
        if size > MAX_OBJECT_BYTES:
            raise CorruptSnapshot(f"manifest: list object {digest.hex()[:12]} would be {size} "
                                  f"bytes (at most {MAX_OBJECT_BYTES}): refused")
    return doc


async def open_manifest(conn: Conn, session_id: str, data: bytes) -> OpenManifest:
    """Open (when sealed) and parse a stored manifest; fetch and check its list objects."""
    ring = keyring.active()
    plain = SessionCodec.open_manifest(session_id, data, ring.keys)
    doc = await anyio.to_thread.run_sync(parse_manifest, plain)
    lists: dict[bytes, bytes] = {}
    if doc.list_refs:
        stored = await repo.fetch_chunks(conn, session_id, list(doc.list_refs))
        codec = ring.codec(session_id, doc.addressing)

        def decode() -> None:
            for digest, size in doc.list_refs.items():
                chunk = stored.get(digest)
                if chunk is None:
                    raise CorruptSnapshot(f"list object {digest.hex()[:12]} is missing")
                lists[digest] = codec.decode(chunk.codec, chunk.data, size, digest, chunk.base)

        await anyio.to_thread.run_sync(decode)
    return OpenManifest(doc.resolve(lists), lists, data, plain)


async def load_manifest(conn: Conn, session_id: str, generation: int) -> OpenManifest:
    """The checked manifest of a committed generation."""
    found = await repo.fetch_manifest(conn, session_id, generation)
    if found is None:
        raise NotFound(f"session {session_id!r} has no generation {generation}")
    data, expected = found
    if hashlib.sha256(data).digest() != expected:
        raise CorruptSnapshot(f"generation {generation}: manifest checksum mismatch")
    return await open_manifest(conn, session_id, data)


async def store_lists(conn: Conn, session_id: str, packed: PackedManifest,
                      codec: SessionCodec, manifest: Manifest | None = None,
                      bases: DeltaBases | None = None) -> int:
    """Store the list objects the database lacks; returns the bytes written. With the
    previous generation's `bases` (and the `manifest` packed), a new list is stored against
    the old list it resembles most (see app/vault/delta_bases.py)."""
    if not packed.lists:
        return 0
    present = await repo.existing_digests(conn, session_id, list(packed.lists))
    missing = set(packed.lists) - present
    found: dict[bytes, tuple[bytes, bytes]] = {}
    if bases is not None and manifest is not None and missing:
        found = await DeltaBases.resolve(
            conn, session_id, codec, bases.list_candidates(manifest, missing, codec.address))
    rows, delta = encode_against(codec, ((d, packed.lists[d]) for d in missing), found)
    if rows:
        await repo.insert_chunks(conn, session_id, rows, delta)
    return sum(len(r[3]) for r in rows)
