"""A local record of each file's stat at the last capture, so unchanged files are not re-read.

A file whose size, mtime, inode and device match the record keeps its chunk list. Files modified
within two seconds of a capture are not recorded ("racily clean", as git calls it): a later write
within the same mtime tick could otherwise go unnoticed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.private_files import private_dir, write_private_text
from app.snapshot.manifest import ADDRESSING_SHA256, pack_refs, unpack_refs
from app.snapshot.staging import StagedFile

RACY_NS = 2_000_000_000
_FORMAT = 2  # chunk references with sizes (content-defined chunks)
Chunks = tuple[tuple[bytes, ...], tuple[int, ...]]  # digests, sizes


@dataclass(slots=True)
class StatCache:
    """Chunk lists of files keyed by path, valid for one session's generation."""

    session_id: str
    generation: int | None = None
    # Content digest of that generation: a cache is only trusted for the very generation it was
    # written for (the database may have been wiped or swapped since).
    content_digest: str | None = None
    entries: dict[str, tuple[int, int, int, int, Chunks]] = field(default_factory=dict)
    # The addressing its chunk lists were made with (Keyring.tag): a cache recorded before
    # the store was keyed names plaintext addresses.
    addressing: str = ADDRESSING_SHA256

    def matches(self, generation: int, content_digest: bytes) -> bool:
        """True if this cache describes that committed generation."""
        return self.generation == generation and self.content_digest == content_digest.hex()

    def belongs_to(self, generation: int | None, content_digest: bytes | None) -> None:
        """Mark the cache as describing a committed generation."""
        self.generation = generation
        self.content_digest = content_digest.hex() if content_digest else None

    @staticmethod
    def path_for(work_dir: Path, session_id: str) -> Path:
        """Where the cache of a session lives."""
        return work_dir / f"stat-cache-{session_id}.json"

    @classmethod
    def load(cls, path: Path, session_id: str) -> StatCache:
        """The cache on disk, or an empty one if it is missing, foreign or unreadable."""
        try:
            doc = json.loads(path.read_text())
            if doc.get("session_id") != session_id or doc.get("format") != _FORMAT:
                return cls(session_id)
            entries = {}
            for rel, (size, mtime, ino, dev, hexed) in doc["entries"].items():
                entries[rel] = (size, mtime, ino, dev, unpack_refs(bytes.fromhex(hexed)))
            return cls(session_id, doc.get("generation"), doc.get("content_digest"), entries,
                       str(doc.get("addressing", ADDRESSING_SHA256)))
        except (OSError, ValueError, KeyError, TypeError):
            return cls(session_id)

    def lookup(self, f: StagedFile) -> Chunks | None:
        """The recorded chunks of a staged file if its live stat is unchanged."""
        entry = self.entries.get(f.path)
        if entry is None or f.size != f.live.size:
            return None
        size, mtime, ino, dev, chunks = entry
        if (size, mtime, ino, dev) != (f.live.size, f.live.mtime_ns, f.live.ino, f.live.dev):
            return None
        return chunks

    def record(self, rel: str, stat: tuple[int, int, int, int], chunks: Chunks,
               now_ns: int) -> None:
        """Remember a file's chunks unless its mtime is too recent to trust."""
        if stat[1] <= now_ns - RACY_NS:
            self.entries[rel] = (*stat, chunks)
        else:
            self.entries.pop(rel, None)

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that are no longer there (LevelDB deletes compacted tables): the cache
        would otherwise grow with every compaction."""
        for rel in [r for r in self.entries if r not in paths]:
            del self.entries[rel]

    def save(self, path: Path) -> None:
        """Write atomically (a crash leaves the old cache or the new one)."""
        private_dir(path.parent)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        write_private_text(tmp, self._json())
        tmp.replace(path)

    def _json(self) -> Iterator[str]:
        """The document, one entry at a time: the chunk lists of a 500 MB profile make
        megabytes of hex, which need not all be in memory at once."""
        head = {"format": _FORMAT, "session_id": self.session_id,
                "generation": self.generation, "content_digest": self.content_digest,
                "addressing": self.addressing}
        yield json.dumps(head, separators=(",", ":"))[:-1] + ',"entries":{'
        for i, (rel, (size, mtime, ino, dev, chunks)) in enumerate(self.entries.items()):
            entry = [size, mtime, ino, dev, pack_refs(*chunks).hex()]
            yield ("," if i else "") + json.dumps(rel) + ":" + json.dumps(entry,
                                                                          separators=(",", ":"))
        yield "}}"
