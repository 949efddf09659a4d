"""Chunking, hashing and chunk codecs.

Files are cut into content-defined chunks (FastCDC: 2 KiB minimum, about 8 KiB on average,
64 KiB at most). Where a cut falls depends only on the bytes around it, so content that moves
to another offset or another file keeps its chunks: when LevelDB compacts, it rewrites tables
that mostly hold blocks of the old ones, and those blocks are found again instead of uploaded.
Appends to a log change only its last chunk. Chunks are compressed with zstd (level 3 by
default: level 19 saves 2-5% more at 40-150x the time); a chunk that does not shrink is stored
raw. The codec name travels with every chunk row: a sealed row's codec also names its cipher and
key (app/snapshot/sealing.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import zstandard

from app.errors import CorruptSnapshot

MIN_CHUNK = 2 * 1024
AVG_CHUNK = 8 * 1024
MAX_CHUNK = 64 * 1024
CHUNKING = "fastcdc-2k-8k-64k"
# Format 1 cut files into fixed blocks of this size; its manifests are still read.
FIXED_CHUNK_SIZE = 64 * 1024
CODEC_ZSTD = "zstd"
CODEC_RAW = "raw"
CODECS = (CODEC_ZSTD, CODEC_RAW)  # what a chunk stored whole uses (and an export holds)
# A zstd frame whose dictionary is another chunk's raw bytes (its base: migrations/0011).
CODEC_DELTA = "zstd-delta"
# A delta is kept only if it is at most this share of the chunk compressed whole: a base
# that barely helps is not worth a dependency.
DELTA_WORTH = 0.7
# FastCDC finds a cut within this many bytes of a chunk's start: a window holding that much
# past a chunk's start (or the end of the file) cuts it exactly as the whole file would.
_LOOKAHEAD = max(64 * 1024, MAX_CHUNK)
_READ = 4 * 1024 * 1024
# The largest object a store holds: a list object is 36 bytes per chunk of one file, so this
# is a file of about 1.8 million chunks (15 GB at the 8 KiB average), far beyond a profile.
MAX_OBJECT_BYTES = 64 * 1024 * 1024


def digest(data: bytes | memoryview) -> bytes:
    """Content address of a chunk: SHA-256 of its raw bytes."""
    return hashlib.sha256(data).digest()


def load_chunker() -> None:
    """Import fastcdc: 60-110 ms, its package loading click for its command line. A boot
    never needs it; the snapshot command starts this while it connects to the database."""
    import fastcdc  # noqa: F401, PLC0415


def iter_chunks(stream: BinaryIO, read_size: int = _READ) -> Iterator[bytes]:
    """Content-defined chunks of a stream, read `read_size` bytes at a time (memory stays
    bounded whatever the file's size); the same cuts as chunking the whole content at once."""
    # Imported here: fastcdc's package loads click (its command line), which no boot needs.
    from fastcdc import fastcdc  # noqa: PLC0415

    buf = b""
    eof = False
    while not eof:
        more = stream.read(read_size)
        eof = not more
        buf += more
        if not buf:
            return
        view = memoryview(buf)
        done = 0
        for c in fastcdc(view, min_size=MIN_CHUNK, avg_size=AVG_CHUNK, max_size=MAX_CHUNK):
            if not eof and c.offset + _LOOKAHEAD > len(buf):
                break  # this cut may depend on bytes not read yet
            yield bytes(view[c.offset : c.offset + c.length])
            done = c.offset + c.length
        buf = buf[done:]


def iter_fixed_chunks(stream: BinaryIO, size: int = MAX_CHUNK) -> Iterator[bytes]:
    """Pieces of `size` bytes (the last one shorter): for files whose content never moves to
    another file or offset (stored blobs), where cutting by content finds nothing to share
    and costs a row per 8 KiB in every snapshot and restore."""
    while piece := stream.read(size):
        yield piece


class Encoder:
    """Compresses chunks; one instance per thread (zstd contexts are not thread-safe)."""

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._zstd = zstandard.ZstdCompressor(level=level, write_content_size=True)

    def encode(self, raw: bytes) -> tuple[str, bytes]:
        """(codec, stored bytes) for a raw chunk; raw when compression does not help."""
        packed: bytes = self._zstd.compress(raw)
        if len(packed) >= len(raw):
            return CODEC_RAW, raw
        return CODEC_ZSTD, packed

    def encode_delta(self, raw: bytes, base: bytes) -> tuple[str, bytes]:
        """(codec, stored bytes) for a raw chunk that resembles `base` (another chunk's raw
        bytes): a frame against it when that is at most DELTA_WORTH of the chunk compressed
        whole, else the chunk as encode() stores it."""
        codec, whole = self.encode(raw)
        with_base = zstandard.ZstdCompressor(
            level=self.level, write_content_size=True,
            dict_data=zstandard.ZstdCompressionDict(
                base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)).compress(raw)
        if len(with_base) <= DELTA_WORTH * len(whole):
            return CODEC_DELTA, with_base
        return codec, whole


def declared_size(stored: bytes | memoryview, what: str) -> int | None:
    """The content size a zstd frame's header declares (None when it declares none).

    python-zstandard allocates and fills that many bytes whatever max_output_size says, so a
    few KB that declare gigabytes would be decompressed in full: every caller compares this
    with what it expects before decompressing."""
    try:
        size = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as exc:
        raise CorruptSnapshot(f"{what}: not a zstd frame ({exc})") from None
    return None if size < 0 else size


def decompress_bounded(stored: bytes | memoryview, limit: int, what: str,
                       exact: int | None = None) -> bytes:
    """Decompress one zstd frame into at most `limit` bytes (exactly `exact` when given);
    CorruptSnapshot, before anything is decompressed, for a frame that declares more."""
    declared = declared_size(stored, what)
    if declared is not None and declared > limit:
        raise CorruptSnapshot(f"{what}: it declares {declared} bytes uncompressed "
                              f"(at most {limit}): refused")
    if exact is not None and declared is not None and declared != exact:
        raise CorruptSnapshot(f"{what}: it declares {declared} bytes uncompressed, "
                              f"{exact} expected")
    try:
        # Without a declared size, max_output_size caps the output buffer.
        raw: bytes = zstandard.ZstdDecompressor().decompress(stored, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise CorruptSnapshot(f"{what}: {exc}") from None
    return raw


class Decoder:
    """Decodes stored chunks and checks them against their digest."""

    def __init__(self) -> None:
        self._zstd = zstandard.ZstdDecompressor()

    def decode(self, codec: str, stored: bytes | memoryview, size: int, expected: bytes,
               address: Callable[[bytes], bytes] | None = digest,
               base: bytes | None = None) -> bytes:
        """Raw bytes of a chunk; CorruptSnapshot if the codec, size or address is wrong
        (`address`: SHA-256, or a keyed session's HMAC; None where the chunk was
        authenticated otherwise: a sealed export's member).

        `size` comes from the chunk's row or reference (a chunk is at most MAX_CHUNK, a list
        object at most MAX_OBJECT_BYTES); a zstd frame declaring another size is refused
        before it is decompressed, so a planted row cannot blow memory up."""
        if not 0 <= size <= MAX_OBJECT_BYTES:
            raise CorruptSnapshot(f"{_name(expected)}: size {size} is out of range")
        if len(stored) > max(size, 64) + 1024:
            raise CorruptSnapshot(f"{_name(expected)}: {len(stored)} bytes stored for "
                                  f"{size} raw")
        if codec == CODEC_ZSTD:
            raw = self._decompress(stored, size, expected)
        elif codec == CODEC_RAW:
            raw = bytes(stored)
        elif codec == CODEC_DELTA:
            if base is None:
                raise CorruptSnapshot(f"{_name(expected)}: a delta without its base")
            raw = self._decompress(stored, size, expected, base)
        else:
            raise CorruptSnapshot(f"{_name(expected)}: unknown codec {codec!r}")
        if len(raw) != size or (address is not None and address(raw) != expected):
            raise CorruptSnapshot(f"{_name(expected)}: digest mismatch")
        return raw

    def _decompress(self, stored: bytes | memoryview, size: int, expected: bytes,
                    base: bytes | None = None) -> bytes:
        what = _name(expected)
        declared = declared_size(stored, what)
        if declared is not None and declared != size:
            raise CorruptSnapshot(f"{what}: its frame declares {declared} bytes, {size} expected")
        zstd = self._zstd if base is None else zstandard.ZstdDecompressor(
            dict_data=zstandard.ZstdCompressionDict(
                base, dict_type=zstandard.DICT_TYPE_RAWCONTENT))
        try:
            raw: bytes = zstd.decompress(stored, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise CorruptSnapshot(f"{what}: {exc}") from None
        return raw


def _name(address: bytes) -> str:
    """How a message names a chunk (made only when one is: a restore decodes tens of
    thousands of chunks)."""
    return f"chunk {address.hex()[:12]}"
