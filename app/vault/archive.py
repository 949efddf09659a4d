"""Export a generation to one portable file, and import it back (into any session).

The file is a tar archive: `sessionkeeper-export.json` (what it holds), `manifest.zst`, then one
member per chunk, `chunks/<address hex>.<codec>`, compressed or raw. An encrypted store writes
version 2: the header names the key (`sealed`), and the manifest and every member are sealed
with the key's export key (AES-256-GCM, bound to the export's id and the member's name), so
the file is as safe to keep as the database. A plaintext store writes version 1 as before.

Import streams it, checks every chunk against its address (or, sealed, its authentication tag)
and the manifest against its checksum, addresses and seals every chunk as the target session
does, and commits the generation only once everything is in: a damaged file changes nothing
that was stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

import anyio
import asyncpg

from app.errors import CorruptSnapshot, NotFound, UserError
from app.log import get_logger
from app.progress import NullProgress, ProgressSink
from app.session_ids import is_session_id
from app.snapshot.codec import CODECS, MAX_CHUNK, Decoder, Encoder, digest
from app.snapshot.manifest import ADDRESSING_SHA256, Manifest
from app.snapshot.sealing import SEAL_OVERHEAD, KeySet, VaultKey
from app.store import repo
from app.vault import keyring
from app.vault.commit import commit_manifest
from app.vault.manifests import MAX_MANIFEST_STORED, load_manifest, parse_manifest
from app.vault.options import BATCH_CHUNKS

EXPORT_FORMAT = "sessionkeeper-export"
EXPORT_VERSION = 1  # plaintext
SEALED_EXPORT_VERSION = 2
HEADER_NAME = "sessionkeeper-export.json"
MANIFEST_NAME = "manifest.zst"
_CHUNK_NAME = re.compile(r"^chunks/([0-9a-f]{64})\.([a-z0-9+-]+)$")
# Every member's size is checked before it is read. The header is a few hundred bytes; the
# manifest as manifests.py allows; a chunk member at most its raw size (a chunk that does not
# shrink is stored raw) plus a frame's overhead, so at most MAX_CHUNK, a list object at most
# MAX_OBJECT_BYTES. A batch of members read ahead stops at _BATCH_BYTES.
_MAX_HEADER = 1024 * 1024
_OVERHEAD = 1024 + SEAL_OVERHEAD
_BATCH_BYTES = 32 * 1024 * 1024


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


class _ExportSeal:
    """Seals (or, for a plaintext store, passes through) the members of one export file."""

    def __init__(self, key: VaultKey | None, export_id: str) -> None:
        self.key = key
        self.export_id = export_id

    @classmethod
    def new(cls, key: VaultKey | None) -> _ExportSeal:
        return cls(key, uuid.uuid4().hex)

    @property
    def version(self) -> int:
        return SEALED_EXPORT_VERSION if self.key is not None else EXPORT_VERSION

    def header(self) -> dict[str, Any]:
        if self.key is None:
            return {}
        return {"sealed": {"cipher": "aes256gcm", "key_id": self.key.id,
                           "export_id": self.export_id}}

    def _ad(self, name: str) -> bytes:
        return b"sk-export\0" + self.export_id.encode() + b"\0" + name.encode()

    def seal(self, name: str, data: bytes) -> bytes:
        return data if self.key is None else self.key.seal(data, self._ad(name), export=True)

    def open(self, name: str, data: bytes) -> bytes:
        if self.key is None:
            return data
        return self.key.open(data, self._ad(name), f"entry {name!r}", export=True)

    @classmethod
    def of_header(cls, header: dict[str, Any], keys: KeySet) -> _ExportSeal:
        """The seal an export's header names (KeyUnavailable without that key)."""
        if header.get("version") == EXPORT_VERSION:
            return cls(None, "")
        sealed = header.get("sealed")
        if (not isinstance(sealed, dict) or sealed.get("cipher") != "aes256gcm"
                or not isinstance(sealed.get("key_id"), str)
                or not isinstance(sealed.get("export_id"), str)):
            raise CorruptSnapshot("its header does not say how it is sealed")
        key = keys.key(sealed["key_id"], "this export")
        return cls(key, sealed["export_id"])


@keyring.with_keyring
async def export_generation(
    pool: asyncpg.Pool, session_id: str, file: Path, *, generation: int | None = None,
    progress: ProgressSink | None = None,
) -> dict[str, Any]:
    """Write one generation of a session to file (atomically: a temp file, then a rename)."""
    progress = progress or NullProgress()
    file = file.absolute()
    tmp = file.parent / f".{file.name}.tmp-{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as conn, repo.chunk_lock_shared(conn, session_id):
        generations = await repo.list_generations(conn, session_id)
        if not generations:
            raise NotFound(f"session {session_id!r} has no snapshot to export")
        info = generations[0] if generation is None else next(
            (g for g in generations if g.generation == generation), None)
        if info is None:
            raise NotFound(f"session {session_id!r} has no generation {generation}")
        opened = await load_manifest(conn, session_id, info.generation)
        source = keyring.active().reader(session_id, opened.manifest)
        whole = Encoder()  # for a delta, which an export holds whole
        seal = _ExportSeal.new(keyring.active().keys.current)
        manifest_member = seal.seal(MANIFEST_NAME, opened.plain)
        # List objects first: an importer learns every chunk digest before the chunks come.
        digests = list(dict.fromkeys(
            [*opened.lists, *(d for f in opened.manifest.files for d in f.chunks)]))
        sizes = {**opened.manifest.chunk_sizes(), **{d: len(raw)
                                                    for d, raw in opened.lists.items()}}
        header = {
            "format": EXPORT_FORMAT, "version": seal.version, "session_id": session_id,
            "generation": info.generation, "created_at": info.created_at.isoformat(),
            "kind": info.kind, "login_state": info.login_state,
            "manifest_sha256": hashlib.sha256(manifest_member).hexdigest(),
            "objects": len(digests), **seal.header(),
        }
        try:
            # Owner-only from its first byte (tarfile would create it 0o666 minus the umask).
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            tar = await anyio.to_thread.run_sync(
                lambda: tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT))
        except OSError as exc:
            if not isinstance(exc, FileExistsError):
                tmp.unlink(missing_ok=True)
            raise UserError(f"cannot write {file}: {exc.strerror}") from None
        try:
            _add(tar, HEADER_NAME, json.dumps(header, indent=1).encode())
            _add(tar, MANIFEST_NAME, manifest_member)
            progress.start("export", len(digests))
            written = 0
            for start in range(0, len(digests), BATCH_CHUNKS):
                window = digests[start : start + BATCH_CHUNKS]
                stored = await repo.fetch_chunks(conn, session_id, window)
                missing = [d for d in window if d not in stored]
                if missing:
                    raise CorruptSnapshot(f"chunk {missing[0].hex()[:12]} is missing")

                def write(window: list[bytes] = window,
                          stored: dict[bytes, repo.StoredChunk] = stored) -> int:
                    total = 0
                    for d in window:
                        chunk = stored[d]
                        inner, data = source.unseal(chunk.codec, chunk.data, sizes[d], d)
                        base = (None if chunk.base is None
                                else source.decode_base(chunk.base, d))
                        # A bad chunk stops here.
                        raw = source.decode_inner(inner, data, sizes[d], d, base)
                        if inner not in CODECS:  # a delta goes out whole: an export stands alone
                            inner, data = whole.encode(raw)
                        name = f"chunks/{d.hex()}.{inner}"
                        member = seal.seal(name, bytes(data))
                        _add(tar, name, member)
                        total += len(member)
                    return total

                written += await anyio.to_thread.run_sync(write)
                progress.advance(len(window))
            await anyio.to_thread.run_sync(tar.close)
            os.replace(tmp, file)
        except BaseException:
            tar.close()
            tmp.unlink(missing_ok=True)
            raise
    get_logger(session_id=session_id).info(
        "snapshot_exported", generation=info.generation, file=str(file),
        chunks=len(digests), bytes=written)
    return {"session_id": session_id, "generation": info.generation, "file": str(file),
            "chunks": len(digests), "bytes": written + len(manifest_member),
            "sealed": seal.key is not None}


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isfile():
        raise CorruptSnapshot(f"unexpected entry {member.name!r}")
    if member.size > limit:
        raise CorruptSnapshot(f"entry {member.name!r} is {member.size} bytes (at most {limit}): "
                              "refused")
    fh: IO[bytes] | None = tar.extractfile(member)
    if fh is None:
        raise CorruptSnapshot(f"unreadable entry {member.name!r}")
    data = fh.read()
    if len(data) != member.size:
        raise CorruptSnapshot(f"entry {member.name!r} is truncated")
    return data


class _Reader:
    """Sequential reader of an export file (tar in stream mode: memory stays flat)."""

    def __init__(self, file: Path) -> None:
        self.tar = tarfile.open(file, "r|")
        self.done = False

    def next(self, limit: int) -> tuple[str, bytes] | None:
        # In stream mode, asking again after the end would seek backwards.
        member = None if self.done else self.tar.next()
        if member is None:
            self.done = True
            return None
        return member.name, _read_member(self.tar, member, limit)

    def chunks(self, count: int, limit: int, seal: _ExportSeal) -> list[tuple[bytes, str, bytes]]:
        """Up to count chunk members of at most limit bytes each, opened (fewer once the batch
        holds _BATCH_BYTES: memory stays bounded)."""
        out: list[tuple[bytes, str, bytes]] = []
        held = 0
        while len(out) < count and held < _BATCH_BYTES:
            item = self.next(limit)
            if item is None:
                break
            match = _CHUNK_NAME.match(item[0])
            if not match or match[2] not in CODECS:
                raise CorruptSnapshot(f"unexpected entry {item[0]!r}")
            out.append((bytes.fromhex(match[1]), match[2], seal.open(item[0], item[1])))
            held += len(item[1])
        return out


def _object_count(header: dict[str, Any]) -> int | None:
    """How many chunk and list objects the export says it holds (`chunks` in the first
    exports, before list objects), None if it does not say."""
    count = header.get("objects", header.get("chunks"))
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return None
    return count


def _open_reader(file: Path, keys: KeySet) -> tuple[_Reader, dict[str, Any], _ExportSeal,
                                                    bytes]:
    try:
        reader = _Reader(file)
        first = reader.next(_MAX_HEADER)
        header = json.loads(first[1]) if first and first[0] == HEADER_NAME else None
        if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
            raise CorruptSnapshot("it does not start with a sessionkeeper export header")
        if header.get("version") not in (EXPORT_VERSION, SEALED_EXPORT_VERSION):
            raise CorruptSnapshot(f"export version {header.get('version')} is not supported")
        seal = _ExportSeal.of_header(header, keys)
        if "session_id" in header and not is_session_id(header["session_id"]):
            raise CorruptSnapshot(f"its header names an invalid session id "
                                  f"{str(header['session_id'])[:140]!r}")
        count = _object_count(header)
        if count is None:
            raise CorruptSnapshot("its header holds no object count")
        second = reader.next(MAX_MANIFEST_STORED)
        if not second or second[0] != MANIFEST_NAME:
            raise CorruptSnapshot("the manifest is missing")
        if hashlib.sha256(second[1]).hexdigest() != header.get("manifest_sha256"):
            raise CorruptSnapshot("manifest checksum mismatch")
        return reader, header, seal, seal.open(MANIFEST_NAME, second[1])
    except (tarfile.TarError, EOFError, ValueError, OSError) as exc:
        raise CorruptSnapshot(f"not a readable sessionkeeper export ({exc})") from None


def _readdressed(manifest: Manifest, renamed: dict[bytes, bytes], addressing: str) -> Manifest:
    """The manifest with every chunk under the address the target session gave it."""
    try:
        return manifest.readdressed(renamed, addressing)
    except KeyError as exc:
        raise CorruptSnapshot(f"chunk {bytes(exc.args[0]).hex()[:12]} is missing") from None


@keyring.with_keyring
async def import_generation(
    pool: asyncpg.Pool, session_id: str, file: Path, *, progress: ProgressSink | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Import an exported generation as the newest generation of session_id (LeaseHeld while
    a process holds the session's lease, unless force)."""
    progress = progress or NullProgress()
    started = time.monotonic()
    if not file.is_file():
        raise UserError(f"{file} is not a file")
    ring = keyring.active()
    try:
        reader, header, seal, packed = await anyio.to_thread.run_sync(
            _open_reader, file, ring.keys)
    except CorruptSnapshot as exc:
        raise CorruptSnapshot(f"{file}: {exc}") from None
    try:
        doc = await anyio.to_thread.run_sync(parse_manifest, packed)
        if doc.addressing != ADDRESSING_SHA256 and seal.key is None:
            raise CorruptSnapshot("keyed addresses in an export that is not sealed")
    except CorruptSnapshot as exc:
        raise CorruptSnapshot(f"{file}: {exc}; nothing imported") from None
    # No member is larger than the largest object the manifest names.
    member_limit = max([MAX_CHUNK, *doc.list_refs.values()]) + _OVERHEAD
    # Sizes of the objects we accept: list objects first; chunks once the lists are in.
    sizes = dict(doc.list_refs)
    lists: dict[bytes, bytes] = {}
    manifest = None if doc.list_refs else doc.resolve({})
    if manifest is not None:
        sizes.update(manifest.chunk_sizes())
    # A plaintext export's chunks are checked against their SHA-256; a sealed one's were
    # authenticated as they were opened (its keyed addresses belong to the source session).
    check = Decoder()
    check_address = digest if seal.key is None else None
    # Every chunk is addressed and sealed as the target session's own; a plaintext export into
    # a plaintext store keeps its SHA-256 addresses, so its stored bytes go in as they are.
    target = ring.codec(session_id)
    as_stored = seal.key is None and not target.sealing and target.addressing == ADDRESSING_SHA256
    renamed: dict[bytes, bytes] = {}
    chunks_new = uploaded = 0
    # A label the file may carry; anything else counts as unlabelled.
    login_state = header.get("login_state") if header.get("login_state") in (
        "ready", "qr", "logged_out") else None
    expected = _object_count(header) or 0
    received = 0
    progress.start("import", expected)
    try:
        # One transaction: an import that fails (or is killed) leaves no chunk and no session
        # row behind. The chunk lock is taken outside it, so it is released even when the
        # transaction ended in an error.
        async with (pool.acquire() as conn, repo.chunk_lock_shared(conn, session_id),
                    conn.transaction()):
            await repo.ensure_session(conn, session_id)
            while batch := await anyio.to_thread.run_sync(
                    reader.chunks, BATCH_CHUNKS, member_limit, seal):
                received += len(batch)
                rows: dict[bytes, tuple[bytes, int, str, bytes]] = {}
                for d, codec, data in batch:
                    if d not in sizes:
                        raise CorruptSnapshot(f"chunk {d.hex()[:12]} is not in the manifest")
                    raw = check.decode(codec, data, sizes[d], d, check_address)
                    if d in doc.list_refs:
                        lists[d] = raw
                        if len(lists) == len(doc.list_refs):
                            manifest = doc.resolve(lists)
                            sizes.update(manifest.chunk_sizes())
                        continue  # the commit stores the target's own list objects
                    if as_stored:
                        renamed[d] = d
                        rows[d] = (d, len(raw), codec, data)
                        continue
                    ours = renamed[d] = target.address(raw)
                    rows[ours] = (ours, len(raw), *target.encode(raw, ours))
                present = await repo.existing_digests(conn, session_id, list(rows))
                fresh = [r for d, r in rows.items() if d not in present]
                await repo.insert_chunks(conn, session_id, fresh)
                chunks_new += len(fresh)
                uploaded += sum(len(r[3]) for r in fresh)
                progress.advance(len(batch))
            # A damaged member header or a file cut where a member starts reads as the
            # end of the archive (stream mode): only the count tells what did not come.
            if received < expected:
                raise CorruptSnapshot(f"truncated export: {received} of {expected} objects")
            if received > expected:
                raise CorruptSnapshot(f"{received} objects, its header says {expected}")
            if manifest is None:
                raise CorruptSnapshot("list objects are missing")
            manifest = _readdressed(manifest, renamed, target.addressing)
            latest = await repo.latest_generation(conn, session_id)
            if latest is not None and latest.content_digest == manifest.content_digest():
                generation, changed = latest.generation, False
            else:
                generation, uploaded = await commit_manifest(
                    conn, session_id, manifest, level=3, kind="import",
                    login_state=login_state, chunks_new=chunks_new,
                    bytes_uploaded=uploaded, started=started, force=force)
                changed = True
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptSnapshot(f"{file}: damaged export ({exc}); nothing committed") from exc
    except CorruptSnapshot as exc:
        raise CorruptSnapshot(f"{file}: {exc}; nothing committed") from None
    result = {"session_id": session_id, "generation": generation, "changed": changed,
              "source_session": header.get("session_id"),
              "source_generation": header.get("generation"), "files": len(manifest.files),
              "bytes_raw": manifest.bytes_raw, "chunks_new": chunks_new,
              "bytes_uploaded": uploaded,
              "duration_ms": int((time.monotonic() - started) * 1000)}
    get_logger(session_id=session_id).info("snapshot_imported", **result)
    return result
