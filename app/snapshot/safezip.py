"""Extracting a zip from an untrusted source into a private folder, refusing anything hostile.

Every entry is checked before a byte is written: a safe relative name (no `..`, absolute
path, backslash or drive letter), a plain file or folder (no symlink, device or other special
file), no duplicates, no encryption, a known compression method, sizes within limits and a
sane compression ratio, no entries sharing their data (the overlapping-entry bomb). Then the
data is decompressed as a stream with running caps, because a header can lie; CRC errors and
truncation are caught by zipfile. Files are written 0600 and folders 0700, whatever the zip says.
"""

from __future__ import annotations

import contextlib
import itertools
import lzma
import os
import stat
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from app.errors import CorruptSnapshot
from app.snapshot.safepath import UnsafePath, check_relative_path

_GIB = 1024**3
_MIB = 1024**2
_READ = _MIB
_SUPPORTED_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                zipfile.ZIP_LZMA})
_ENCRYPTED = 0x1 | 0x40  # traditional PKWARE / strong encryption flag bits
_UTF8_NAME = 0x800
_LOCAL_HEADER = 30  # fixed part of a local file header
# What unpacking reads in fails with on damaged data, besides BadZipFile.
# (RuntimeError: a password is required, for an encryption bit only the local header sets.)
_DAMAGED = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, struct.error,
            ValueError, NotImplementedError, RuntimeError)


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """What a zip may hold. A logged-in WhatsApp profile is tens of MB in a few hundred files."""

    max_entries: int = 50_000
    max_total: int = 4 * _GIB
    max_entry: int = 1 * _GIB
    max_ratio: int = 200
    # Entries below this size may compress as well as they like (a mostly empty SQLite page
    # or a LevelDB log of repeated keys legitimately reaches 1000:1).
    ratio_floor: int = 8 * _MIB


@dataclass(frozen=True, slots=True)
class Extracted:
    """What extract_zip wrote."""

    files: int
    dirs: int
    bytes: int


class UnsafeZip(CorruptSnapshot):
    """A zip refused as hostile or damaged; nothing of it stays on disk."""


def _name(info: zipfile.ZipInfo) -> str:
    name = info.filename[:-1] if info.is_dir() else info.filename
    # check_relative_path knows POSIX escapes; a drive letter only escapes elsewhere, but a
    # zip holding one was not made from a profile folder.
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise UnsafeZip(f"entry {info.filename!r} names a drive")
    try:
        return check_relative_path(name)
    except UnsafePath as exc:
        raise UnsafeZip(f"entry {info.filename!r} is not a safe relative path ({exc})") from None


def _check_entry(info: zipfile.ZipInfo, limits: ZipLimits) -> None:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise UnsafeZip(f"entry {info.filename!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeZip(f"entry {info.filename!r} is a device, pipe or other special file")
    if (kind == stat.S_IFDIR) != info.is_dir() and kind != 0:
        raise UnsafeZip(f"entry {info.filename!r} is marked both file and folder")
    if info.flag_bits & _ENCRYPTED:
        raise UnsafeZip(f"entry {info.filename!r} is encrypted")
    if info.compress_type not in _SUPPORTED_METHODS:
        raise UnsafeZip(f"entry {info.filename!r} uses compression method "
                        f"{info.compress_type}, which is not supported")
    if info.file_size > limits.max_entry:
        raise UnsafeZip(f"entry {info.filename!r} is {info.file_size} bytes uncompressed "
                        f"(at most {limits.max_entry})")
    if (info.file_size > limits.ratio_floor
            and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
        ratio = info.file_size // max(info.compress_size, 1)
        raise UnsafeZip(f"entry {info.filename!r} has a compression ratio of {ratio}:1 "
                        f"(at most {limits.max_ratio}:1 above {limits.ratio_floor} bytes): "
                        "a zip bomb")


def _check_overlap(infos: list[zipfile.ZipInfo], central_dir: int) -> None:
    """Refuse entries whose data overlaps another's (one compressed kernel quoted by many
    entries makes a small zip expand to terabytes); zipfile checks this only from 3.11.8/3.12.2.
    The local header's extra field is not counted, so this is a lower bound of each span."""
    spans = sorted(
        (i.header_offset, i.header_offset + _LOCAL_HEADER + i.compress_size + len(
            i.orig_filename.encode("utf-8" if i.flag_bits & _UTF8_NAME else "cp437",
                                   errors="replace")), i.filename)
        for i in infos)
    for (_, end, name), (start, _, _) in itertools.pairwise(spans):
        if end > start:
            raise UnsafeZip(f"entry {name!r} overlaps the next entry's data")
    if spans and spans[-1][1] > central_dir:
        raise UnsafeZip(f"entry {spans[-1][2]!r} runs past the end of the data")


Plan = tuple[list[str], list[tuple[str, zipfile.ZipInfo]]]


def _plan(zf: zipfile.ZipFile, limits: ZipLimits) -> Plan:
    """The folders and files to write, once every entry has passed the checks."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeZip(f"it has {len(infos)} entries (at most {limits.max_entries})")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_total:
        raise UnsafeZip(f"it declares {declared} bytes uncompressed (at most {limits.max_total})")
    dirs: set[str] = set()
    files: dict[str, zipfile.ZipInfo] = {}
    seen: set[str] = set()
    for info in infos:
        _check_entry(info, limits)
        name = _name(info)
        if name in seen:
            raise UnsafeZip(f"entry {name!r} appears twice")
        seen.add(name)
        if info.is_dir():
            dirs.add(name)
        else:
            files[name] = info
        parts = name.split("/")
        dirs.update("/".join(parts[:n]) for n in range(1, len(parts)))
    clash = sorted(dirs & files.keys())
    if clash:
        raise UnsafeZip(f"entry {clash[0]!r} is both a file and a folder")
    _check_overlap(list(files.values()), zf.start_dir)
    return sorted(dirs), sorted(files.items())


def _write(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int,
           limits: ZipLimits) -> int:
    """Decompress one entry into target; the bytes written."""
    cap = min(info.file_size, limits.max_entry, budget)
    written = 0
    # O_EXCL|O_NOFOLLOW: the folder is ours and fresh, but never follow or overwrite anything.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while block := src.read(_READ):
            written += len(block)
            if written > cap:
                raise UnsafeZip(f"entry {info.filename!r} expands past its declared size "
                                "or the size limit")
            out.write(block)
    if written != info.file_size:
        raise UnsafeZip(f"entry {info.filename!r} is truncated")
    with contextlib.suppress(ValueError, OverflowError, OSError):
        stamp = time.mktime((*info.date_time, 0, 0, -1))
        os.utime(target, (stamp, stamp))
    return written


def _declared_entries(file: Path) -> int | None:
    """The entry count the end record declares, read before zipfile builds an object per
    entry (millions of 46-byte records would exhaust memory first); None if unknown."""
    end_record = getattr(zipfile, "_EndRecData", None)  # private, stable since Python 2
    if end_record is None:
        return None
    with file.open("rb") as fh:
        record = end_record(fh)
    index = getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)
    return int(record[index]) if record else None


def extract_zip(file: Path, dest: Path, limits: ZipLimits | None = None) -> Extracted:
    """Extract file into dest (an existing, empty, private folder); UnsafeZip, with one line
    saying why, for a hostile or damaged zip (the caller removes dest)."""
    limits = limits or ZipLimits()
    total = 0
    try:
        declared = _declared_entries(file)
        if declared is not None and declared > limits.max_entries:
            raise UnsafeZip(f"it has {declared} entries (at most {limits.max_entries})")
        with zipfile.ZipFile(file) as zf:
            dirs, files = _plan(zf, limits)
            for rel in dirs:
                (dest / rel).mkdir(mode=0o700)
            for rel, info in files:
                total += _write(zf, info, dest / rel, limits.max_total - total, limits)
    except UnsafeZip:
        raise
    except _DAMAGED as exc:
        raise UnsafeZip(f"damaged zip ({exc})") from None
    return Extracted(files=len(files), dirs=len(dirs), bytes=total)
