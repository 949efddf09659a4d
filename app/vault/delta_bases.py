"""Which stored chunk a new chunk is likely a new version of: the base of a delta.

When LevelDB compacts, a new table holds mostly the records of the old ones; a block that
took new records comes out as a new content-defined chunk, although most of its bytes were
stored already. Stored against the old version of that block (zstd with the old block as its
dictionary: Encoder.encode_delta), it costs about the new records. The old version is found
by position: the chunk that followed, in the previous generation, the chunk just before the
new one (a run of unchanged blocks, then the changed one); else the chunk at the same place
in the previous version of the same file (a settings file rewritten, a log's last block).
A new table's chunk list (a list object of 9 KB for 2 MB) is stored against the list of the
old table it shares most chunks with.

A base is always a chunk stored whole: a candidate that is a delta itself gives way to its
own base, so restoring a delta takes one other row and no chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from app.errors import CorruptSnapshot
from app.snapshot.codec import CODEC_DELTA
from app.snapshot.keep import is_stored_blob
from app.snapshot.manifest import LIST_THRESHOLD, FileEntry, Manifest, pack_refs
from app.snapshot.sealing import SessionCodec, split_codec
from app.store import repo
from app.store.repo import Conn


class DeltaBases:
    """Base candidates for the new chunks of a snapshot, from the previous generation."""

    def __init__(self, previous: Manifest | None) -> None:
        self.after: dict[bytes, bytes] = {}  # chunk -> the chunk after it in its file
        self.by_path: dict[str, FileEntry] = {}
        for f in previous.files if previous is not None else ():
            if is_stored_blob(f.path):  # written once: never a new version of anything
                continue
            self.by_path[f.path] = f
            self.after.update(zip(f.chunks, f.chunks[1:], strict=False))

    def candidate(self, rel: str, index: int, before: bytes | None) -> bytes | None:
        """A likely old version of chunk `index` of file `rel` (`before`: the chunk before
        it in that file), or None."""
        found = self.after.get(before) if before is not None else None
        if found is None:
            old = self.by_path.get(rel)
            if old is not None and index < len(old.chunks):
                found = old.chunks[index]
        return found

    def list_candidates(self, manifest: Manifest, new_lists: set[bytes],
                        address: Callable[[bytes], bytes]) -> dict[bytes, bytes]:
        """For each new list object (a big file's chunk list), the list object of the old
        file in the same folder that shares the most chunks with it: a table that compaction
        rewrote lists mostly the chunks of the tables it came from, in runs."""
        def list_of(f: FileEntry) -> bytes:
            return address(pack_refs(f.chunks, f.chunk_sizes()))

        wanted: dict[bytes, bytes] = {}
        big_old = [f for f in self.by_path.values() if len(f.chunks) > LIST_THRESHOLD]
        for f in manifest.files:
            if len(f.chunks) <= LIST_THRESHOLD or is_stored_blob(f.path):
                continue
            digest = list_of(f)
            if digest not in new_lists:
                continue
            folder, mine = f.path.rpartition("/")[0], set(f.chunks)
            shared, best = max(((len(mine.intersection(g.chunks)), g) for g in big_old
                                if g.path.rpartition("/")[0] == folder),
                               key=lambda pair: pair[0], default=(0, None))
            if best is not None and shared:
                wanted[digest] = list_of(best)
        return wanted

    @staticmethod
    async def resolve(conn: Conn, session_id: str, codec: SessionCodec,
                      wanted: dict[bytes, bytes]) -> dict[bytes, tuple[bytes, bytes]]:
        """For each new chunk, its base (address and raw bytes): the candidate, or the
        candidate's own base when it is a delta. A candidate gone or unreadable is no base
        (the chunk is stored whole)."""
        rows = await repo.fetch_chunks(conn, session_id, list(set(wanted.values())))
        raw: dict[bytes, tuple[bytes, bytes]] = {}
        for digest, row in rows.items():
            try:
                if row.base is not None:
                    raw[digest] = (row.base[0], codec.decode_base(row.base, digest))
                else:
                    raw[digest] = (digest, codec.decode_base(
                        (digest, row.size, row.codec, row.data), digest))
            except CorruptSnapshot:
                continue
        return {d: raw[c] for d, c in wanted.items() if c in raw and raw[c][0] != d}


def encode_against(codec: SessionCodec, objects: Iterable[tuple[bytes, bytes]],
                   bases: Mapping[bytes, tuple[bytes, bytes]],
                   ) -> tuple[list[tuple[bytes, int, str, bytes]], dict[bytes, bytes]]:
    """Rows (address, raw size, codec, stored bytes) of raw objects, each stored against its
    base (see `resolve`) where that pays; and the base each delta row names."""
    rows = [(d, len(raw), *codec.encode(raw, d, bases[d][1] if d in bases else None))
            for d, raw in objects]
    return rows, {r[0]: bases[r[0]][0] for r in rows if split_codec(r[2])[0] == CODEC_DELTA}
