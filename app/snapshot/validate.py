"""Consistency checks for a staged copy of a Chromium profile.

A copy taken while Chromium writes can be torn: a LevelDB MANIFEST may name table files the
copy lacks (Chromium then deletes that database at next launch), or a SQLite file may be
mid-write. Only the staged copy is checked, so SQLite may modify it (hot journal rollback).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Problem", "validate_leveldb", "validate_sqlite", "validate_tree"]


@dataclass(frozen=True)
class Problem:
    """One inconsistency: where (relative POSIX path) and why."""

    path: str
    reason: str


SQLITE_MAGIC = b"SQLite format 3\x00"
_CURRENT_RE = re.compile(rb"(MANIFEST-[0-9]+)\n")
# CURRENT is one short line; anything much longer is not a CURRENT file.
_CURRENT_MAX = 4096
_SQLITE_TIMEOUT_S = 0.5

# LevelDB log format (db/log_format.h).
_BLOCK_SIZE = 32768
_HEADER_SIZE = 7
_ZERO, _FULL, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3, 4
_NUM_LEVELS = 7  # config::kNumLevels; VersionEdit rejects levels beyond it

# VersionEdit tags (db/version_edit.cc).
_TAG_COMPARATOR = 1
_TAG_LOG_NUMBER = 2
_TAG_NEXT_FILE = 3
_TAG_LAST_SEQUENCE = 4
_TAG_COMPACT_POINTER = 5
_TAG_DELETED_FILE = 6
_TAG_NEW_FILE = 7
_TAG_PREV_LOG_NUMBER = 9


class _Corrupt(Exception):
    """A MANIFEST that LevelDB itself would refuse to recover from."""


def validate_tree(root: Path) -> list[Problem]:
    """Check every LevelDB folder and SQLite file under root; an empty list means consistent."""
    problems: list[Problem] = []
    stack: list[tuple[Path, str]] = [(root, ".")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if rel == ".":
                raise
            problems.append(Problem(rel, f"unreadable_dir {exc.strerror}"))
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            child = entry.name if rel == "." else f"{rel}/{entry.name}"
            # Symlinks are never followed: the staged copy should hold none, and following
            # one could leave the staging directory.
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((Path(entry.path), child))
            elif entry.is_file(follow_symlinks=False):
                if entry.name == "CURRENT":
                    problems.extend(_check_leveldb(folder, rel))
                if _has_sqlite_magic(entry.path):
                    problems.extend(_check_sqlite(Path(entry.path), child))
        # Reversed so the stack pops subdirectories in name order (stable output).
        stack.extend(reversed(subdirs))
    return problems


def validate_leveldb(folder: Path) -> list[Problem]:
    """Check one LevelDB folder; problems carry path "." (the folder itself)."""
    return _check_leveldb(folder, ".")


def validate_sqlite(file: Path) -> list[Problem]:
    """Run PRAGMA quick_check on one SQLite file; problems carry path "." (the file itself)."""
    return _check_sqlite(file, ".")


# --- LevelDB -------------------------------------------------------------------------------


@dataclass
class _Version:
    """What recovering a MANIFEST yields that matters for file presence."""

    tables: dict[tuple[int, int], int]  # (level, number) -> file size
    log_number: int | None = None
    has_next_file: bool = False
    has_last_sequence: bool = False


def _check_leveldb(folder: Path, rel: str) -> list[Problem]:
    try:
        with open(folder / "CURRENT", "rb") as f:
            current = f.read(_CURRENT_MAX + 1)
    except OSError as exc:
        return [Problem(rel, f"current_unreadable {exc.strerror}")]
    match = _CURRENT_RE.fullmatch(current)
    if match is None:
        return [Problem(rel, f"current_malformed {current[:64]!r}")]
    manifest_name = match.group(1).decode("ascii")

    files = _regular_file_sizes(folder)
    if manifest_name not in files:
        return [Problem(rel, f"missing_manifest {manifest_name}")]
    try:
        data = (folder / manifest_name).read_bytes()
    except OSError as exc:
        return [Problem(rel, f"manifest_unreadable {manifest_name} {exc.strerror}")]
    try:
        version = _recover(data)
    except _Corrupt as exc:
        # The live file set is unknown past a corrupt record, so file checks would only add noise.
        return [Problem(rel, f"manifest_corrupt {manifest_name} {exc}")]
    if not (version.has_next_file and version.log_number is not None and version.has_last_sequence):
        # VersionSet::Recover fails without these, as with a MANIFEST copied before its first
        # record was written.
        return [Problem(rel, f"manifest_incomplete {manifest_name}")]

    problems: list[Problem] = []
    for (_level, number), expected in sorted(version.tables.items(), key=lambda kv: kv[0][1]):
        name = f"{number:06d}.ldb"
        # LevelDB's TableCache falls back to the pre-1.14 ".sst" name.
        legacy = f"{number:06d}.sst"
        found = name if name in files else legacy if legacy in files else None
        if found is None:
            problems.append(Problem(rel, f"missing_table {name}"))
        elif files[found] != expected:
            problems.append(
                Problem(rel, f"table_size_mismatch {found} expected {expected} got {files[found]}")
            )
    if version.log_number:
        log_name = f"{version.log_number:06d}.log"
        if log_name not in files:
            problems.append(Problem(rel, f"missing_log {log_name}"))
    return problems


def _regular_file_sizes(folder: Path) -> dict[str, int]:
    """One scandir instead of a stat per table: folders hold hundreds of tables."""
    sizes: dict[str, int] = {}
    with contextlib.suppress(OSError), os.scandir(folder) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    sizes[entry.name] = entry.stat(follow_symlinks=False).st_size
    return sizes


def _recover(manifest: bytes) -> _Version:
    """Replay every VersionEdit in a MANIFEST, as VersionSet::Recover does."""
    version = _Version(tables={})
    for record in _log_records(manifest):
        _apply_edit(version, record)
    return version


def _log_records(data: bytes) -> Iterator[bytes]:
    """Reassemble log records the way leveldb::log::Reader does (without CRC checks).

    A record cut off by end-of-file is dropped silently: the writer was mid-append, and
    LevelDB's reader ignores it too.
    """
    size = len(data)
    pending: list[bytes] | None = None  # fragments of a FIRST..LAST record
    block_start = 0
    while block_start < size:
        block_end = min(block_start + _BLOCK_SIZE, size)
        # Only a short block is the end of the file; leveldb's reader sets eof_ on a short read.
        at_eof = block_end - block_start < _BLOCK_SIZE
        pos = block_start
        while block_end - pos >= _HEADER_SIZE:
            length = data[pos + 4] | (data[pos + 5] << 8)
            rtype = data[pos + 6]
            start = pos + _HEADER_SIZE
            end = start + length
            if end > block_end:
                if at_eof:
                    return  # a fragment the writer had not finished
                raise _Corrupt(f"bad record length at offset {pos}")
            if rtype == _ZERO and length == 0:
                # Zeroed space (preallocation): LevelDB skips the rest of the block.
                if pending is not None:
                    raise _Corrupt(f"zeroed space in the middle of a record at offset {pos}")
                break
            payload = data[start:end]
            if rtype in (_FULL, _FIRST):
                # An empty unfinished FIRST is a known artefact of old writers, not corruption.
                if pending is not None and any(pending):
                    raise _Corrupt(f"partial record without end at offset {pos}")
                if rtype == _FULL:
                    pending = None
                    yield payload
                else:
                    pending = [payload]
            elif rtype in (_MIDDLE, _LAST):
                if pending is None:
                    raise _Corrupt(f"missing start of fragmented record at offset {pos}")
                pending.append(payload)
                if rtype == _LAST:
                    yield b"".join(pending)
                    pending = None
            else:
                raise _Corrupt(f"unknown record type {rtype} at offset {pos}")
            pos = end
        if at_eof:
            return  # a header cut off by end-of-file
        # Fewer than 7 bytes left in a full block: trailer padding.
        block_start += _BLOCK_SIZE
    # A FIRST/MIDDLE with no LAST at end-of-file is an unfinished append: dropped.


def _varint(buf: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    """Decode a varint of at most max_bytes bytes (5 for varint32, 10 for varint64)."""
    result = 0
    shift = 0
    limit = min(len(buf), pos + max_bytes)
    while pos < limit:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _Corrupt("bad varint")


def _slice_end(buf: bytes, pos: int) -> int:
    """Skip a length-prefixed slice; return the offset after it."""
    length, pos = _varint(buf, pos, 5)
    if pos + length > len(buf):
        raise _Corrupt("slice overruns record")
    return pos + length


def _level(buf: bytes, pos: int) -> tuple[int, int]:
    level, pos = _varint(buf, pos, 5)
    if level >= _NUM_LEVELS:
        raise _Corrupt(f"bad level {level}")
    return level, pos


def _apply_edit(version: _Version, record: bytes) -> None:
    """Decode one VersionEdit fully, then apply it (a bad edit leaves version untouched)."""
    pos = 0
    deleted: list[tuple[int, int]] = []
    added: list[tuple[int, int, int]] = []
    log_number: int | None = None
    while pos < len(record):
        tag, pos = _varint(record, pos, 5)
        if tag == _TAG_COMPARATOR:
            pos = _slice_end(record, pos)
        elif tag == _TAG_LOG_NUMBER:
            log_number, pos = _varint(record, pos, 10)
        elif tag == _TAG_NEXT_FILE:
            _, pos = _varint(record, pos, 10)
            version.has_next_file = True
        elif tag == _TAG_LAST_SEQUENCE:
            _, pos = _varint(record, pos, 10)
            version.has_last_sequence = True
        elif tag == _TAG_COMPACT_POINTER:
            _, pos = _level(record, pos)
            pos = _slice_end(record, pos)
        elif tag == _TAG_DELETED_FILE:
            level, pos = _level(record, pos)
            number, pos = _varint(record, pos, 10)
            deleted.append((level, number))
        elif tag == _TAG_NEW_FILE:
            level, pos = _level(record, pos)
            number, pos = _varint(record, pos, 10)
            file_size, pos = _varint(record, pos, 10)
            pos = _slice_end(record, pos)  # smallest key
            pos = _slice_end(record, pos)  # largest key
            added.append((level, number, file_size))
        elif tag == _TAG_PREV_LOG_NUMBER:
            # Only set by pre-2011 LevelDB; its log is optional, so it is not checked.
            _, pos = _varint(record, pos, 10)
        else:
            raise _Corrupt(f"unknown tag {tag}")
    if log_number is not None:
        version.log_number = log_number
    # VersionSet::Builder applies an edit's deletions before its additions, so a file moved
    # to another level in one edit (trivial move) stays live.
    for key in deleted:
        version.tables.pop(key, None)
    for level, number, file_size in added:
        version.tables[(level, number)] = file_size


# --- SQLite --------------------------------------------------------------------------------


def _has_sqlite_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _check_sqlite(file: Path, rel: str) -> list[Problem]:
    if not file.is_file():
        # sqlite3.connect would create an empty database in its place.
        return [Problem(rel, "sqlite_quick_check file missing")]
    try:
        # Read-write on purpose: a hot -journal beside the copy is rolled back (and a -wal
        # replayed) on first read, which is what Chromium would do at launch.
        with contextlib.closing(sqlite3.connect(file, timeout=_SQLITE_TIMEOUT_S)) as conn:
            # (1): stop at the first error; a torn file can yield thousands.
            rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.Error as exc:
        return [Problem(rel, f"sqlite_quick_check {_one_line(str(exc))}")]
    if rows == [("ok",)]:
        return []
    first = str(rows[0][0]) if rows else "no result"
    return [Problem(rel, f"sqlite_quick_check {_one_line(first)}")]


def _one_line(message: str) -> str:
    """quick_check messages span lines ("*** in database main ***\nOn tree page ...")."""
    return " ".join(message.split())
