"""Copy a live SQLite database with its journal as they were at one instant.

Chromium's cookie store is a SQLite file with a rollback journal. Copied one file after the
other while Chromium commits, the copy can hold half a transaction and a journal that no
longer undoes it: a table that disagrees with its index, which `quick_check` does not see and
Chromium answers by razing the store. SQLite's backup API would need a lock on the live file,
and Chromium holds exclusive locks on some of its databases for as long as it runs (and sets
no busy timeout on the others, so a reader's lock could fail its commit). So the files are
copied without a lock and then read again: every member (database, `-journal`, `-wal`) is
copied, in order, and then each is compared with the live file, in the same order. When all
compare equal, no byte of any member changed between the end of the last copy and the start
of the first re-read, so the copies are the files as they were at that instant, which SQLite
recovers from like from a crash (a hot journal is rolled back, a WAL replayed). Otherwise
the group is copied again.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"
MEMBER_SUFFIXES = ("", "-journal", "-wal")
_BLOCK = 1024 * 1024


class Unstable(Exception):
    """The files kept changing over every try."""


def is_sqlite(path: Path) -> bool:
    """True for a regular file that starts with SQLite's header."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def members(rel: str, keeps: Callable[[str], bool]) -> list[str]:
    """The database and the journal and WAL beside it that the rules keep (WAL's `-shm` is an
    index SQLite rebuilds from the WAL, never needed)."""
    return [rel + s for s in MEMBER_SUFFIXES if not s or keeps(rel + s)]


def _stat(path: Path) -> os.stat_result | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _copy(src: Path, dst: Path, st: os.stat_result) -> bool:
    """Copy src to dst with the mtime of st; False (and no dst) when src has gone."""
    dst.unlink(missing_ok=True)
    try:
        shutil.copyfile(src, dst)
    except FileNotFoundError:
        dst.unlink(missing_ok=True)
        return False
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns))
    return True


def _same(live: Path, copy: Path, copied: bool) -> bool:
    """True when the live file still holds exactly what was copied (or is still absent)."""
    try:
        live_f = open(live, "rb")
    except FileNotFoundError:
        return not copied
    with live_f:
        if not copied:
            return False
        with open(copy, "rb") as copy_f:
            while True:
                block = live_f.read(_BLOCK)
                if block != copy_f.read(_BLOCK):
                    return False
                if not block:
                    return True


def copy_group(src_dir: Path, dst_dir: Path, names: list[str], tries: int = 20,
               delay: float = 0.002) -> dict[str, os.stat_result | None]:
    """Copy the named files of src_dir into dst_dir as of one instant; the stat of each live
    file taken just before the copy that held (None: absent then). Unstable after `tries`."""
    for attempt in range(tries):
        before: dict[str, os.stat_result | None] = {}
        copied: dict[str, bool] = {}
        for n in names:
            # Each member is looked at in its turn: a journal absent a moment ago may be
            # there now (a transaction began), and then it belongs to the copy.
            before[n] = _stat(src_dir / n)
            st = before[n]
            copied[n] = st is not None and _copy(src_dir / n, dst_dir / n, st)
            if not copied[n]:
                (dst_dir / n).unlink(missing_ok=True)
        if all(_same(src_dir / n, dst_dir / n, copied[n]) for n in names):
            return {n: before[n] if copied[n] else None for n in names}
        time.sleep(delay * (attempt + 1))
    for n in names:
        (dst_dir / n).unlink(missing_ok=True)
    raise Unstable(f"changed during each of {tries} copies")
