"""The restore's data path: one binary COPY of the chunks, written where the manifest places
them in whatever order they come; the snapshot's: COPY into the chunk table, stored blobs in
fixed pieces, batches bounded in bytes."""

from __future__ import annotations

import io
import os
import random
import struct
from pathlib import Path

import asyncpg
import pytest

from app.errors import CorruptSnapshot
from app.snapshot.codec import MAX_CHUNK, iter_chunks, iter_fixed_chunks
from app.snapshot.manifest import FileEntry
from app.store import repo
from app.store.copy_binary import SIGNATURE, CopyFormatError, CopyRows
from app.vault import restore as restore_mod
from app.vault import save as save_mod
from app.vault.manifests import load_manifest
from app.vault.options import BATCH_BYTES, VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from tests.support.profile_tree import BLOBS, IDB, ProfileTree, tree_files

pytestmark = pytest.mark.anyio


def _copy_stream(rows: list[tuple[bytes, ...]]) -> bytes:
    """A binary COPY stream as PostgreSQL writes it."""
    out = bytearray(SIGNATURE + struct.pack(">II", 0, 0))
    for row in rows:
        out += struct.pack(">h", len(row))
        for field in row:
            out += struct.pack(">i", len(field)) + field
    return bytes(out + struct.pack(">h", -1))


@pytest.mark.parametrize("seed", range(5))
def test_rows_come_out_whole_however_the_stream_is_cut(seed: int) -> None:
    rng = random.Random(seed)
    rows = [(struct.pack(">i", n), b"zstd", rng.randbytes(rng.randrange(0, 3000)))
            for n in range(200)]
    stream = _copy_stream(rows)
    parser, got, at = CopyRows(fields=3), [], 0
    while at < len(stream):
        step = rng.choice([1, 2, 7, 100, 4096, 20000])
        got += [tuple(bytes(f) for f in row) for row in parser.feed(stream[at : at + step])]
        at += step
    parser.finish()
    assert got == rows


def test_a_damaged_or_short_stream_is_refused() -> None:
    good = _copy_stream([(b"\x00\x00\x00\x01", b"raw", b"abc")])
    with pytest.raises(CopyFormatError, match="not a binary COPY"):
        CopyRows(fields=3).feed(b"PGCOPY\nXX" + good[9:])
    cut = CopyRows(fields=3)
    cut.feed(good[:-2])  # the trailer is missing
    with pytest.raises(CopyFormatError, match="before its trailer"):
        cut.finish()
    with pytest.raises(CopyFormatError, match="2 fields, 3 expected"):
        CopyRows(fields=3).feed(_copy_stream([(b"a", b"b")]))
    null = SIGNATURE + struct.pack(">IIhi", 0, 0, 3, -1)
    with pytest.raises(CopyFormatError, match="NULL"):
        CopyRows(fields=3).feed(null)
    with pytest.raises(CopyFormatError, match="NULL"):  # only the last field may be NULL
        CopyRows(fields=3, nullable_from=2).feed(null)
    allowed = CopyRows(fields=2, nullable_from=1)
    assert [tuple(r) for r in allowed.feed(
        SIGNATURE + struct.pack(">IIhi", 0, 0, 2, 1) + b"x" + struct.pack(">ih", -1, -1))] \
        == [(memoryview(b"x"), None)]
    allowed.finish()


def test_chunks_in_any_order_make_the_same_files(tmp_path: Path) -> None:
    """The writer places each chunk by its offset, keeps few files open, and sets the mtime
    once a file is complete; empty files are created at the end."""
    rng = random.Random(3)
    contents = {f"f{i}": rng.randbytes(rng.randrange(0, 50_000)) for i in range(12)}
    files = [FileEntry(name, 0o600, len(data), 1_600_000_000_000_000_000 + i, (), ())
             for i, (name, data) in enumerate(sorted(contents.items()))]
    pieces = [(index, offset, contents[f.path][offset : offset + 4096])
              for index, f in enumerate(files) for offset in range(0, f.size, 4096)]
    rng.shuffle(pieces)
    (tmp_path / "t").mkdir()
    writer = restore_mod._TreeWriter(tmp_path / "t", files)
    writer.MAX_OPEN = 3  # fewer than the files in flight: some are set aside and reopened
    for index, offset, data in pieces:
        writer.write(index, offset, [data[:1000], data[1000:]])
    writer.finish()
    for i, f in enumerate(files):
        path = tmp_path / "t" / f.path
        assert path.read_bytes() == contents[f.path]
        assert path.stat().st_mtime_ns == 1_600_000_000_000_000_000 + i
    assert not writer.open


def test_a_file_left_short_is_corrupt(tmp_path: Path) -> None:
    files = [FileEntry("a", 0o600, 10, 0, (), ())]
    (tmp_path / "t").mkdir()
    writer = restore_mod._TreeWriter(tmp_path / "t", files)
    writer.write(0, 0, [b"12345"])
    with pytest.raises(CorruptSnapshot, match="5 bytes written"):
        writer.finish()
    writer.abort()


async def test_copy_chunks_streams_the_rows_asked_for(pool: asyncpg.Pool) -> None:
    rows = [(bytes([n]) * 32, 3, "raw", bytes([n]) * 3) for n in range(1, 6)]
    async with pool.acquire() as conn:
        await repo.ensure_session(conn, "s")
        await repo.insert_chunks(conn, "s", rows)
        blocks: list[bytes] = []

        async def sink(block: bytes) -> None:
            blocks.append(block)

        wanted = [rows[3][0], rows[0][0], b"\x77" * 32]  # the last one is not stored
        await repo.copy_chunks(conn, "s", wanted, sink)
    parser = CopyRows(fields=7, nullable_from=3)
    got = [tuple(None if f is None else bytes(f) for f in r)
           for block in blocks for r in parser.feed(block)]
    parser.finish()
    # Stored whole: no base row (NULLs).
    assert sorted(got) == [(struct.pack(">i", 0), b"raw", rows[3][3], None, None, None, None),
                           (struct.pack(">i", 1), b"raw", rows[0][3], None, None, None, None)]


@pytest.mark.parametrize("damage", ["missing", "digest mismatch"])
async def test_a_damaged_chunk_fails_the_generation_and_the_next_one_restores(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        damage: str) -> None:
    """A fault met in the middle of the stream ends it, and the same connection restores the
    older generation right after."""
    await save_snapshot(pool, "s", profile.root, options)
    expected = tree_files(profile.root)
    profile.add_messages(40)
    await save_snapshot(pool, "s", profile.root, options)
    async with pool.acquire() as conn:
        newer = (await load_manifest(conn, "s", 2)).manifest.digests()
        older = (await load_manifest(conn, "s", 1)).manifest.digests()
        only_newer = sorted(newer - older)
        assert len(only_newer) > 1
        if damage == "missing":
            await conn.execute("DELETE FROM chunks WHERE session_id = 's' AND digest = $1",
                               only_newer[0])
        else:  # every chunk of the newer generation: the fault comes with the first rows
            await conn.execute("UPDATE chunks SET codec = 'raw', data = digest "
                               "WHERE session_id = 's' AND digest = ANY($1)", only_newer)
    result = await restore_profile(pool, "s", tmp_path / "restored")
    assert result.generation == 1
    assert result.skipped[0]["generation"] == 2
    assert damage in result.skipped[0]["reason"]
    restored = tree_files(tmp_path / "restored")
    assert {k: v for k, v in expected.items() if k in restored} == restored


async def test_copy_insert_falls_back_when_a_chunk_is_stored_already(
        pool: asyncpg.Pool) -> None:
    """COPY has no ON CONFLICT: a batch holding a chunk stored already (an interrupted
    snapshot's, another writer's) goes in by INSERT ... ON CONFLICT instead, storing only
    what is new, in the same transaction as the caller's other writes."""
    first = (b"\x01" * 32, 3, "raw", b"abc")
    second = (b"\x02" * 32, 3, "raw", b"def")
    async with pool.acquire() as conn:
        await repo.ensure_session(conn, "s")
        assert await repo.insert_chunks(conn, "s", [first]) == {first[0]}
        async with conn.transaction():
            assert await repo.insert_chunks(conn, "s", [first, second]) == {second[0]}
            assert await conn.fetchval("SELECT 1") == 1  # the transaction is still usable
        count = await conn.fetchval("SELECT count(*) FROM chunks WHERE session_id = 's'")
    assert count == 2


async def test_stored_blobs_are_cut_in_fixed_pieces_and_tables_by_content(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions) -> None:
    await save_snapshot(pool, "s", profile.root, options)
    async with pool.acquire() as conn:
        manifest = (await load_manifest(conn, "s", 1)).manifest
    blobs = [f for f in manifest.files if f.path.startswith(BLOBS) and f.size > MAX_CHUNK]
    tables = [f for f in manifest.files if f.path.startswith(IDB) and f.path.endswith(".ldb")]
    assert blobs and tables
    for f in blobs:
        assert f.chunk_sizes()[:-1] == (MAX_CHUNK,) * (len(f.chunks) - 1), f.path
    data = (profile.root / tables[0].path).read_bytes()
    assert tables[0].chunk_sizes() == tuple(len(c) for c in iter_chunks(io.BytesIO(data)))


def test_fixed_pieces_and_batches_are_bounded() -> None:
    data = os.urandom(3 * MAX_CHUNK + 5)
    assert [len(p) for p in iter_fixed_chunks(io.BytesIO(data))] == [MAX_CHUNK] * 3 + [5]
    big = iter_fixed_chunks(io.BytesIO(os.urandom(10 * BATCH_BYTES)))
    batch = save_mod._read_hash(big, 256, lambda raw: raw[:32])
    assert BATCH_BYTES <= sum(len(raw) for _, raw in batch) < BATCH_BYTES + MAX_CHUNK


async def test_a_restore_in_many_slices_is_the_same_profile(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunks come in several COPYs (each names at most COPY_SLICE of them), each
    stream with its own header and trailer, and their positions counted from the slice."""
    await save_snapshot(pool, "s", profile.root, options)
    await restore_profile(pool, "s", tmp_path / "whole")
    monkeypatch.setattr(restore_mod, "COPY_SLICE", 7)
    calls: list[int] = []
    real_copy = repo.copy_chunks

    async def counted(*args: object) -> None:
        calls.append(1)
        await real_copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(repo, "copy_chunks", counted)
    await restore_profile(pool, "s", tmp_path / "sliced")
    assert len(calls) > 3
    assert tree_files(tmp_path / "sliced") == tree_files(tmp_path / "whole")


def test_a_short_write_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pwritev may write less than asked (a signal, a full pipe of the kernel): the rest
    follows."""
    real = os.pwritev

    def short(fd: int, parts: list[bytes], offset: int) -> int:
        return real(fd, [parts[0][:3]], offset)

    monkeypatch.setattr(restore_mod.os, "pwritev", short)
    (tmp_path / "t").mkdir()
    writer = restore_mod._TreeWriter(tmp_path / "t", [FileEntry("a", 0o600, 10, 0, (), ())])
    writer.write(0, 0, [b"01234", b"56789"])
    writer.finish()
    assert (tmp_path / "t" / "a").read_bytes() == b"0123456789"
