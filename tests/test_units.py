"""Unit tests: keep rules, chunker and codecs, manifest, safe paths."""

from __future__ import annotations

import io
import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from app.errors import CorruptSnapshot
from app.snapshot.codec import (
    AVG_CHUNK,
    CODEC_RAW,
    CODEC_ZSTD,
    FIXED_CHUNK_SIZE,
    MAX_CHUNK,
    MIN_CHUNK,
    Decoder,
    Encoder,
    digest,
    iter_chunks,
)
from app.snapshot.keep import KeepRules, is_immutable, unpaired_service_workers
from app.snapshot.manifest import DirEntry, FileEntry, Manifest, pack_refs
from app.snapshot.safepath import UnsafePath, check_relative_path, is_singleton

# ---------------------------------------------------------------- keep rules

KEPT = [
    "Local State",
    "Default/Preferences",
    "Default/Cookies",
    "Default/Cookies-journal",
    "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb/000123.ldb",
    "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb/MANIFEST-000001",
    "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb/CURRENT",
    "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.blob/1/00/3",
    "Default/Local Storage/leveldb/000003.log",
    "Default/WebStorage/QuotaManager",
    "Default/File System/Origins/000003.log",
    "Default/Service Worker/Database/000003.log",
    "Default/Service Worker/ScriptCache/index",
    "Profile 1/IndexedDB/x.indexeddb.leveldb/CURRENT",
]
DROPPED = [
    "SingletonLock",
    "SingletonSocket",
    "SingletonCookie",
    "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb/LOCK",
    "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb/LOG",
    "Default/IndexedDB/https_web.whatsapp.com_0.indexeddb.leveldb/LOG.old",
    "Default/Cache/Cache_Data/data_0",
    "Default/Code Cache/js/index",
    "Default/GPUCache/data_1",
    "Default/DawnWebGPUCache/data_0",
    "Default/DawnGraphiteCache/data_0",
    "GrShaderCache/data_0",
    "ShaderCache/data_0",
    "Default/Media Cache/x",
    "BrowserMetrics/BrowserMetrics-1.pma",
    "BrowserMetrics-spare.pma",
    "Crashpad/settings.dat",
    "Default/History",
    "Default/Sessions/Session_1",
    "Default/Service Worker/CacheStorage/abc/index",
    "Default/Favicons",
    "Default/Extensions/x/manifest.json",
]


@pytest.mark.parametrize("path", KEPT)
def test_kept_paths(path: str) -> None:
    assert KeepRules().keeps(path)


@pytest.mark.parametrize("path", DROPPED)
def test_dropped_paths(path: str) -> None:
    assert not KeepRules().keeps(path)


def test_cache_storage_is_a_setting() -> None:
    path = "Default/Service Worker/CacheStorage/abc/index"
    assert not KeepRules().keeps(path)
    assert KeepRules.create(keep_cache_storage=True).keeps(path)


def test_user_globs() -> None:
    rules = KeepRules.create(include=["Default/Extension State/**"],
                             exclude=["Default/File System/**"])
    assert rules.keeps("Default/Extension State/000003.log")
    assert not rules.keeps("Default/File System/Origins/000003.log")
    assert rules.keeps("Default/Cookies")
    # Lock files stay out even when a user includes everything.
    everything = KeepRules.create(include=["**"])
    assert everything.keeps("Default/Favicons")
    assert not everything.keeps("SingletonLock")
    assert not everything.keeps("Default/IndexedDB/x.leveldb/LOCK")


def test_dropped_dirs_are_pruned() -> None:
    rules = KeepRules()
    assert rules.prunes_dir("Default/Cache")
    assert rules.prunes_dir("Crashpad")
    assert not rules.prunes_dir("Default/IndexedDB")


def test_immutable_files() -> None:
    assert is_immutable("Default/IndexedDB/a.leveldb/000005.ldb")
    assert is_immutable("Default/IndexedDB/a.blob/1/00/5")
    assert not is_immutable("Default/IndexedDB/a.leveldb/000006.log")
    assert not is_immutable("Default/IndexedDB/a.leveldb/MANIFEST-000001")
    assert not is_immutable("Default/Cookies")


def test_service_worker_pairing() -> None:
    both = ["Default/Service Worker/Database/CURRENT", "Default/Service Worker/ScriptCache/index"]
    assert unpaired_service_workers(both) == set()
    assert unpaired_service_workers(both[:1]) == {"Default"}
    assert unpaired_service_workers(both[1:]) == {"Default"}


# ---------------------------------------------------------------- chunker and codecs


@pytest.mark.parametrize("size", [0, 1, MIN_CHUNK, MAX_CHUNK + 1, 3 * MAX_CHUNK, 5_000_000])
def test_chunks_are_content_defined_and_bounded(size: int) -> None:
    data = random.Random(size).randbytes(size)
    chunks = list(iter_chunks(io.BytesIO(data)))
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= MAX_CHUNK for c in chunks)
    assert all(len(c) >= MIN_CHUNK for c in chunks[:-1])
    if size > 1_000_000:
        assert 0.5 * AVG_CHUNK < size / len(chunks) < 3 * AVG_CHUNK
    # Reading in small windows cuts exactly where reading it all at once does.
    assert list(iter_chunks(io.BytesIO(data), read_size=70_000)) == chunks


def test_moved_content_keeps_its_chunks() -> None:
    """What LevelDB compaction does: the same blocks at other offsets, in another file."""
    data = random.Random(1).randbytes(2_000_000)
    before = {digest(c) for c in iter_chunks(io.BytesIO(data))}
    moved = random.Random(2).randbytes(3000) + data[:900_000] + b"new" + data[900_000:]
    after = list(iter_chunks(io.BytesIO(moved)))
    new_bytes = sum(len(c) for c in after if digest(c) not in before)
    assert new_bytes < 5 * MAX_CHUNK  # the inserted bytes and the chunks around them


def test_codec_round_trip_and_raw_fallback() -> None:
    enc, dec = Encoder(3), Decoder()
    text = b"hello world " * 5000
    codec, stored = enc.encode(text)
    assert codec == CODEC_ZSTD and len(stored) < len(text) / 10
    assert dec.decode(codec, stored, len(text), digest(text)) == text
    noise = Path("/dev/urandom").open("rb").read(MAX_CHUNK)
    codec, stored = enc.encode(noise)
    assert codec == CODEC_RAW and stored == noise
    assert dec.decode(codec, stored, len(noise), digest(noise)) == noise


def test_decoder_rejects_damage() -> None:
    enc, dec = Encoder(3), Decoder()
    text = b"abc" * 10000
    codec, stored = enc.encode(text)
    with pytest.raises(CorruptSnapshot):
        dec.decode(codec, stored, len(text), digest(b"other"))
    with pytest.raises(CorruptSnapshot):
        dec.decode(codec, stored[:-5] + b"xxxxx", len(text), digest(text))
    with pytest.raises(CorruptSnapshot, match="unknown codec"):
        dec.decode("aes", stored, len(text), digest(text))


# ---------------------------------------------------------------- manifest


def _manifest() -> Manifest:
    d1, d2 = digest(b"1"), digest(b"2")
    return Manifest(
        files=[FileEntry("Default/Cookies", 0o600, MAX_CHUNK + 1, 123, (d1, d2),
                         (MAX_CHUNK, 1)),
               FileEntry("Local State", 0o644, 0, 456, ())],
        dirs=[DirEntry("Default", 0o700)],
    )


def test_manifest_round_trip() -> None:
    m = _manifest()
    back = Manifest.from_bytes(m.pack().data)
    assert sorted(back.files, key=lambda f: f.path) == sorted(m.files, key=lambda f: f.path)
    assert back.dirs == m.dirs
    assert back.content_digest() == m.content_digest()
    assert back.bytes_raw == MAX_CHUNK + 1
    assert back.chunk_sizes() == {digest(b"1"): MAX_CHUNK, digest(b"2"): 1}


def test_format_1_manifests_are_still_read() -> None:
    d1, d2 = digest(b"1"), digest(b"2")
    old = _raw_manifest([["Default/Cookies", 0o600, FIXED_CHUNK_SIZE + 5, 1, (d1 + d2).hex()]])
    (f,) = Manifest.from_bytes(old).files
    assert f.chunks == (d1, d2) and f.chunk_sizes() == (FIXED_CHUNK_SIZE, 5)


def test_big_files_keep_their_chunk_list_in_a_list_object() -> None:
    chunks = tuple(digest(bytes([i, j])) for i in range(3) for j in range(10))  # 30 chunks
    sizes = tuple(5000 + i for i in range(30))
    big = FileEntry("Default/IndexedDB/x.leveldb/000005.ldb", 0o600, sum(sizes), 1, chunks,
                    sizes)
    m = Manifest(files=[big, *_manifest().files], dirs=_manifest().dirs)
    packed = m.pack()
    assert len(packed.lists) == 1
    (ref, raw), = packed.lists.items()
    assert raw == pack_refs(chunks, sizes) and ref == digest(raw)
    assert len(packed.data) < 400  # the manifest names the list, not 30 digests
    with pytest.raises(CorruptSnapshot, match="missing"):
        Manifest.from_bytes(packed.data)
    back = Manifest.from_bytes(packed.data, packed.lists)
    assert back.content_digest() == m.content_digest()
    with pytest.raises(CorruptSnapshot, match="chunk sizes"):
        Manifest.from_bytes(packed.data, {ref: raw[:-36]})
    # Unchanged big files give the same list object in every generation.
    assert Manifest(files=[big], dirs=[]).pack().lists == {ref: raw}


def test_content_digest_ignores_mtime_not_content() -> None:
    m = _manifest()
    touched = Manifest(files=[FileEntry(f.path, f.mode, f.size, f.mtime_ns + 1, f.chunks)
                              for f in m.files], dirs=m.dirs)
    assert touched.content_digest() == m.content_digest()
    changed = Manifest(files=[*m.files[:1], FileEntry("Local State", 0o600, 0, 456, ())],
                       dirs=m.dirs)
    assert changed.content_digest() != m.content_digest()


def _raw_manifest(files: list[list[object]], dirs: list[list[object]] | None = None) -> bytes:
    doc = {"version": 1, "chunk_size": FIXED_CHUNK_SIZE, "dirs": dirs or [], "files": files}
    return zstandard.ZstdCompressor().compress(json.dumps(doc).encode())


@pytest.mark.parametrize("files,dirs", [
    ([["a", 0o600, 10, 0, ""]], None),                                  # 10 bytes, no chunk
    ([["a", 0o600, 10, 0, digest(b"x").hex() * 2]], None),              # too many chunks
    ([["a", 0o600, 0, 0, ""], ["a", 0o600, 0, 0, ""]], None),           # duplicate
    ([["a", 0o600, 0, 0, ""], ["a/b", 0o600, 0, 0, ""]], None),         # file under a file
    ([["a", 0o600, 0, 0, ""]], [["a", 0o700]]),                         # dir and file
    ([["../x", 0o600, 0, 0, ""]], None),
    ([["/etc/passwd", 0o600, 0, 0, ""]], None),
    ([["a", 0o100000, 0, 0, ""]], None),                                # not a permission mode
    ([["a", 0o600, -1, 0, ""]], None),
])
def test_manifest_rejects_bad_documents(files: list[list[object]],
                                        dirs: list[list[object]] | None) -> None:
    with pytest.raises(CorruptSnapshot):
        Manifest.from_bytes(_raw_manifest(files, dirs))


def test_manifest_rejects_garbage() -> None:
    with pytest.raises(CorruptSnapshot):
        Manifest.from_bytes(b"not zstd at all")
    with pytest.raises(CorruptSnapshot):
        Manifest.from_bytes(zstandard.ZstdCompressor().compress(b"[1,2,3]"))


# ---------------------------------------------------------------- safe paths


@pytest.mark.parametrize("path", ["a", "Default/Cookies", "Local State", "a/b.c/d..e", "…/ü"])
def test_safe_paths_accepted(path: str) -> None:
    assert check_relative_path(path) == path


@pytest.mark.parametrize("path", ["", "/abs", "..", "a/../b", "a/./b", "./a", "a//b", "a/",
                                  "a\\b", "a\x00b", "a\nb", "x" * 300])
def test_unsafe_paths_rejected(path: str) -> None:
    with pytest.raises(UnsafePath):
        check_relative_path(path)


_segment = st.sampled_from(["..", ".", "", "a", "b c", "/", "\\", "\x00", "ü", "..a"])


@given(st.lists(_segment, min_size=1, max_size=6).map("/".join))
def test_accepted_paths_never_escape(path: str) -> None:
    """Whatever check_relative_path accepts stays inside any root it is joined to."""
    root = Path("/srv/target")
    try:
        check_relative_path(path)
    except UnsafePath:
        return
    resolved = (root / path).resolve(strict=False)
    assert resolved == root / path
    assert resolved.is_relative_to(root) and resolved != root


@given(st.text(min_size=1, max_size=40))
def test_any_text_is_accepted_only_if_plain(path: str) -> None:
    try:
        check_relative_path(path)
    except UnsafePath:
        return
    parts = path.split("/")
    assert not path.startswith("/")
    assert all(p not in ("", ".", "..") for p in parts)
    assert "\x00" not in path and "\\" not in path


def test_singleton_names() -> None:
    assert is_singleton("SingletonLock") and is_singleton("Default/SingletonCookie")
    assert not is_singleton("Default/Cookies")


@pytest.mark.parametrize(("env", "expected"), [({}, "True"), ({"MALLOC_ARENA_MAX": "4"}, "False")])
def test_malloc_arenas_are_capped_unless_the_operator_chose(env: dict[str, str],
                                                             expected: str) -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", "from app.memory import limit_malloc_arenas as f; print(f())"],
        env={**base, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_database_errors_are_told_from_local_ones() -> None:
    import errno as errnos

    from app.failures import is_database_error

    assert is_database_error(ConnectionRefusedError(errnos.ECONNREFUSED, "refused"))
    assert is_database_error(TimeoutError())
    # asyncpg's socket errors name no file, whatever the errno (a missing unix socket).
    assert is_database_error(OSError(errnos.ENOENT, "No such file or directory"))
    assert is_database_error(OSError("Multiple exceptions: [Errno 111] Connect call failed"))
    # Our own file operations name their file; a full disk or too many open files is local.
    assert not is_database_error(FileNotFoundError(errnos.ENOENT, "gone", "/p/Default"))
    assert not is_database_error(OSError(errnos.ENOSPC, "No space left on device"))
    assert not is_database_error(OSError(errnos.EMFILE, "Too many open files"))
    assert not is_database_error(RuntimeError("a bug"))


def test_a_broken_pipeline_reports_the_failure_not_the_broken_stream() -> None:
    """A restore's writer fails on a corrupt chunk while the fetcher sends the next batch: CI
    saw both come out of the task group, [BrokenResourceError, CorruptSnapshot], an
    ExceptionGroup no caller catches. The broken stream is a consequence; the failure counts."""
    import anyio

    from app.errors import CorruptSnapshot
    from app.tasks import sole_error

    cause = CorruptSnapshot("chunk abc: not a zstd frame")
    group = ExceptionGroup("pipeline", [anyio.BrokenResourceError(), cause])
    assert sole_error(group) is cause
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [cause])])
    assert sole_error(nested) is cause
    two = ExceptionGroup("two causes", [cause, OSError("disk")])
    assert sole_error(two) is two  # two real failures stay together
