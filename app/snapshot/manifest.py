"""The manifest: every kept file's path, mode, size, mtime and chunks (digest and size).

Serialised as zstd-compressed JSON. A chunk reference is its SHA-256 digest and its raw size
(4 bytes, big-endian): chunks are content-defined, so their sizes vary. Format 1 (fixed 64 KiB
chunks, digests only) is still read. A file of more than LIST_THRESHOLD chunks does not carry its
chunk digests inline: they go into a content-addressed "list object" (the digests, back to
back) stored like a chunk, and the manifest names that object ("@" + its digest) and the
number of chunks. A LevelDB
table or a stored blob never changes, so its list object is stored once and every later
generation names it in 65 bytes instead of 32 bytes per chunk: the manifest of a 500 MB profile
stays a few KiB, and a small change writes little more than the change.

Format 3 names how chunks are addressed: `sha256` (a plaintext store, as formats 1 and 2) or
`hmac-sha256` (an encrypted store: see app/snapshot/sealing.py); list objects are addressed
the same way. Formats 1 and 2 are still read.

Parsing checks every path (no escape from the target) and that each file's chunk list fits its
size, so a hostile or damaged manifest fails here, before anything is written to disk.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import zstandard

from app.errors import CorruptSnapshot
from app.snapshot.codec import CHUNKING, FIXED_CHUNK_SIZE, MAX_CHUNK, digest
from app.snapshot.safepath import UnsafePath, check_relative_path

FORMAT_VERSION = 3
FIXED_FORMAT = 1  # fixed 64 KiB chunks, references without sizes
SIZED_FORMAT = 2  # content-defined chunks, SHA-256 addresses
ADDRESSING_SHA256 = "sha256"
ADDRESSING_HMAC = "hmac-sha256"
DIGEST_BYTES = 32
REF_BYTES = DIGEST_BYTES + 4
_REF = struct.Struct(">32sI")
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
LIST_THRESHOLD = 16  # chunks: bigger files keep their chunk list in a list object
LIST_PREFIX = "@"


@dataclass(frozen=True, slots=True)
class PackedManifest:
    """A serialised manifest and the list objects it names (digest -> raw bytes)."""

    data: bytes
    lists: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file of a snapshot."""

    path: str
    mode: int
    size: int
    mtime_ns: int
    chunks: tuple[bytes, ...]
    # Raw size of each chunk; empty means format 1's fixed layout.
    sizes: tuple[int, ...] = ()

    def chunk_sizes(self) -> tuple[int, ...]:
        """Raw size of each chunk, in order."""
        if self.sizes:
            return self.sizes
        return tuple(min(self.size - n * FIXED_CHUNK_SIZE, FIXED_CHUNK_SIZE)
                     for n in range(len(self.chunks)))


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory of a snapshot (kept so empty directories come back too)."""

    path: str
    mode: int


@dataclass(slots=True)
class Manifest:
    """Everything needed to rebuild a profile from content-addressed chunks."""

    files: list[FileEntry] = field(default_factory=list)
    dirs: list[DirEntry] = field(default_factory=list)
    # How its chunk and list object addresses were computed (ADDRESSING_*).
    addressing: str = ADDRESSING_SHA256

    @property
    def bytes_raw(self) -> int:
        """Total size of the files."""
        return sum(f.size for f in self.files)

    def digests(self) -> set[bytes]:
        """Every distinct chunk digest the manifest references."""
        return {d for f in self.files for d in f.chunks}

    def chunk_sizes(self) -> dict[bytes, int]:
        """Raw size of every referenced chunk."""
        sizes: dict[bytes, int] = {}
        for f in self.files:
            sizes.update(zip(f.chunks, f.chunk_sizes(), strict=True))
        return sizes

    def readdressed(self, renamed: Mapping[bytes, bytes], addressing: str) -> Manifest:
        """The same files with every chunk under its new address (KeyError for a chunk that
        `renamed` does not name)."""
        files = [FileEntry(f.path, f.mode, f.size, f.mtime_ns,
                           tuple(renamed[d] for d in f.chunks), f.chunk_sizes())
                 for f in self.files]
        return Manifest(files=files, dirs=self.dirs, addressing=addressing)

    def content_digest(self) -> bytes:
        """Identity of the content (paths, modes, sizes, chunks; not mtimes).

        Two captures with the same content digest are the same profile, so the second one
        creates no generation.
        """
        h = hashlib.sha256()
        for d in sorted(self.dirs, key=lambda e: e.path):
            h.update(f"d\0{d.path}\0{d.mode}\n".encode())
        for f in sorted(self.files, key=lambda e: e.path):
            h.update(f"f\0{f.path}\0{f.mode}\0{f.size}\0".encode())
            h.update(b"".join(f.chunks))
            h.update(b"\n")
        return h.digest()

    def pack(self, level: int = 3,
             address: Callable[[bytes], bytes] = digest) -> PackedManifest:
        """Serialise, moving the chunk lists of big files into list objects (addressed by
        `address`, the function this manifest's chunks were addressed with)."""
        lists: dict[bytes, bytes] = {}
        rows = []
        for f in sorted(self.files, key=lambda e: e.path):
            packed = pack_refs(f.chunks, f.chunk_sizes())
            if len(f.chunks) > LIST_THRESHOLD:
                ref = address(packed)
                lists[ref] = packed
                rows.append([f.path, f.mode, f.size, f.mtime_ns, LIST_PREFIX + ref.hex(),
                             len(f.chunks)])
            else:
                rows.append([f.path, f.mode, f.size, f.mtime_ns, packed.hex()])
        doc = {
            "version": FORMAT_VERSION,
            "chunking": CHUNKING,
            "addressing": self.addressing,
            "dirs": [[d.path, d.mode] for d in sorted(self.dirs, key=lambda e: e.path)],
            "files": rows,
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()
        data: bytes = zstandard.ZstdCompressor(level=level).compress(raw)
        return PackedManifest(data, lists)

    @classmethod
    def from_bytes(cls, data: bytes, lists: Mapping[bytes, bytes] | None = None) -> Manifest:
        """Parse and check a serialised manifest whose list objects are given."""
        return ManifestDoc.parse(data).resolve(lists or {})


@dataclass(slots=True)
class ManifestDoc:
    """A parsed manifest whose list objects may still have to be fetched."""

    doc: dict[str, Any]
    list_refs: dict[bytes, int]  # list object digest -> its size in bytes

    @classmethod
    def parse(cls, data: bytes) -> ManifestDoc:
        """Decompress and parse; CorruptSnapshot on anything unexpected."""
        try:
            raw = zstandard.ZstdDecompressor().decompress(
                data, max_output_size=MAX_MANIFEST_BYTES
            )
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a manifest")
            if doc.get("version") == FIXED_FORMAT:
                if doc.get("chunk_size") != FIXED_CHUNK_SIZE:
                    raise ValueError("unknown chunk size")
            elif (doc.get("version") not in (SIZED_FORMAT, FORMAT_VERSION)
                  or doc.get("chunking") != CHUNKING):
                raise ValueError("unknown manifest version")
            if doc["version"] == FORMAT_VERSION and doc.get("addressing") not in (
                    ADDRESSING_SHA256, ADDRESSING_HMAC):
                raise ValueError("unknown addressing")
            refs: dict[bytes, int] = {}
            for row in doc["files"]:
                size, ref = row[2], row[4]
                if isinstance(ref, str) and ref.startswith(LIST_PREFIX):
                    if not isinstance(size, int) or size < 0:
                        raise ValueError("bad size")
                    if doc["version"] == FIXED_FORMAT:
                        refs[_digest(ref[1:])] = DIGEST_BYTES * -(-size // FIXED_CHUNK_SIZE)
                    else:
                        count = row[5]
                        if not isinstance(count, int) or not 0 < count <= size:
                            raise ValueError("bad chunk count")
                        refs[_digest(ref[1:])] = REF_BYTES * count
        except (zstandard.ZstdError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise CorruptSnapshot(f"manifest unreadable: {exc}") from None
        return cls(doc, refs)

    def resolve(self, lists: Mapping[bytes, bytes]) -> Manifest:
        """The full manifest, chunk lists filled in from the list objects."""
        try:
            return self._resolve(lists)
        except UnsafePath as exc:
            raise CorruptSnapshot(f"manifest has an unsafe path: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptSnapshot(f"manifest malformed: {exc}") from None

    def _resolve(self, lists: Mapping[bytes, bytes]) -> Manifest:
        seen: set[str] = set()
        dirs = []
        for path, mode in self.doc["dirs"]:
            dirs.append(DirEntry(_unique(check_relative_path(path), seen), _mode(mode)))
        files = []
        fixed = self.doc["version"] == FIXED_FORMAT
        for path, mode, size, mtime_ns, ref, *_ in self.doc["files"]:
            if not isinstance(size, int) or size < 0 or not isinstance(mtime_ns, int):
                raise ValueError(f"bad size or mtime for {path!r}")
            if not isinstance(ref, str):
                raise ValueError(f"bad chunk list for {path!r}")
            if ref.startswith(LIST_PREFIX):
                digest = _digest(ref[1:])
                if digest not in lists:
                    raise ValueError(f"list object {ref[1:13]} of {path!r} is missing")
                packed = lists[digest]
            else:
                packed = bytes.fromhex(ref)
            if fixed:
                if len(packed) % DIGEST_BYTES:
                    raise ValueError(f"bad chunk list for {path!r}")
                chunks = tuple(
                    packed[i : i + DIGEST_BYTES] for i in range(0, len(packed), DIGEST_BYTES)
                )
                if len(chunks) != -(-size // FIXED_CHUNK_SIZE):
                    raise ValueError(f"chunk count does not match size for {path!r}")
                sizes: tuple[int, ...] = ()
            else:
                chunks, sizes = unpack_refs(packed)
                if sum(sizes) != size or not all(0 < s <= MAX_CHUNK for s in sizes):
                    raise ValueError(f"chunk sizes do not match size for {path!r}")
            files.append(
                FileEntry(_unique(check_relative_path(path), seen), _mode(mode), size,
                          mtime_ns, chunks, sizes)
            )
        _check_parents(dirs, files)
        return Manifest(files=files, dirs=dirs, addressing=self.addressing)

    @property
    def addressing(self) -> str:
        """How the manifest's chunks are addressed (SHA-256 before format 3)."""
        scheme: str = self.doc.get("addressing", ADDRESSING_SHA256)
        return scheme


def _digest(hexed: str) -> bytes:
    digest = bytes.fromhex(hexed)
    if len(digest) != DIGEST_BYTES:
        raise ValueError("bad list object digest")
    return digest


def _unique(path: str, seen: set[str]) -> str:
    if path in seen:
        raise ValueError(f"duplicate path {path!r}")
    seen.add(path)
    return path


def _mode(mode: Any) -> int:
    if not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise ValueError(f"bad mode {mode!r}")
    return mode


def _check_parents(dirs: list[DirEntry], files: list[FileEntry]) -> None:
    """A file may not stand where another entry needs a directory."""
    file_paths = {f.path for f in files}
    for path in [*(d.path for d in dirs), *file_paths]:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in file_paths:
                raise ValueError(f"{path!r} lies under a file")


def pack_refs(chunks: tuple[bytes, ...], sizes: tuple[int, ...]) -> bytes:
    """Chunk references back to back: digest, then raw size as 4 bytes big-endian."""
    return b"".join(_REF.pack(d, n) for d, n in zip(chunks, sizes, strict=True))


def unpack_refs(packed: bytes) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
    """(digests, sizes) of packed chunk references; ValueError when malformed."""
    if len(packed) % REF_BYTES:
        raise ValueError("bad chunk list")
    if not packed:
        return (), ()
    digests, sizes = zip(*_REF.iter_unpack(packed), strict=True)
    return digests, sizes
