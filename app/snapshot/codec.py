"""Chunking, hashing and chunk codecs.

Files are cut into fixed 64 KiB chunks: Chromium's LevelDB tables never change and its logs only
grow at the end, so between two snapshots only a few percent of 64 KiB blocks differ. Chunks are
compressed with zstd (level 3 by default: level 19 saves 2-5% more at 40-150x the time). A chunk
that does not shrink is stored raw. The codec name travels with every chunk row so that an
encrypted codec can be added without a format break.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from app.errors import CorruptSnapshot

CHUNK_SIZE = 64 * 1024
CODEC_ZSTD = "zstd"
CODEC_RAW = "raw"
CODECS = (CODEC_ZSTD, CODEC_RAW)


def digest(data: bytes) -> bytes:
    """Content address of a chunk: SHA-256 of its raw bytes."""
    return hashlib.sha256(data).digest()


def iter_chunks(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield fixed-size chunks (the last one may be shorter) until end of stream."""
    while True:
        block = stream.read(chunk_size)
        if not block:
            return
        yield block


class Encoder:
    """Compresses chunks; one instance per thread (zstd contexts are not thread-safe)."""

    def __init__(self, level: int = 3) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level, write_content_size=True)

    def encode(self, raw: bytes) -> tuple[str, bytes]:
        """(codec, stored bytes) for a raw chunk; raw when compression does not help."""
        packed: bytes = self._zstd.compress(raw)
        if len(packed) >= len(raw):
            return CODEC_RAW, raw
        return CODEC_ZSTD, packed


class Decoder:
    """Decodes stored chunks and checks them against their digest."""

    def __init__(self) -> None:
        self._zstd = zstandard.ZstdDecompressor()

    def decode(self, codec: str, stored: bytes, size: int, expected: bytes) -> bytes:
        """Raw bytes of a chunk; CorruptSnapshot if the codec, size or digest is wrong."""
        if codec == CODEC_ZSTD:
            try:
                raw: bytes = self._zstd.decompress(stored, max_output_size=size)
            except zstandard.ZstdError as exc:
                raise CorruptSnapshot(f"chunk {expected.hex()[:12]}: {exc}") from None
        elif codec == CODEC_RAW:
            raw = bytes(stored)
        else:
            raise CorruptSnapshot(f"chunk {expected.hex()[:12]}: unknown codec {codec!r}")
        if len(raw) != size or digest(raw) != expected:
            raise CorruptSnapshot(f"chunk {expected.hex()[:12]}: digest mismatch")
        return raw
