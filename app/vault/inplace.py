"""Swap a restored tree into a profile folder that cannot be renamed: a mount point.

A volume mounted at the profile path (Railway, Render) can be neither renamed nor exchanged
(EBUSY), so its contents are swapped instead, through our work folder inside it (same
filesystem: every move is a rename). The restored tree is complete and checked before the
swap begins; renaming it to `incoming` is the commit point. From there a crash at any step is
finished at the next restore (`finish_interrupted_swap`), never undone: the old entries move
to `outgoing`, which is renamed `retired` once empty of them (the second phase begins), then
the new entries move in, and `retired` is deleted. Before the commit point the old profile is
untouched and what was written is only cleared.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from app.snapshot.keep import WORK_DIR_NAME

INCOMING = "incoming"
OUTGOING = "outgoing"
RETIRED = "retired"
RESTORE_PREFIX = "restore-"


def work_area(profile: Path) -> Path:
    """Our folder inside the profile (staging, stat cache and restores of a mount point)."""
    return profile / WORK_DIR_NAME


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_contents(fresh: Path, profile: Path) -> None:
    """Replace the entries of profile with those of fresh (a folder in its work area)."""
    work = work_area(profile)
    if fresh.parent != work:
        raise ValueError(f"{fresh} is not in {work}")
    shutil.rmtree(work / RETIRED, ignore_errors=True)  # what an earlier swap failed to delete
    (work / OUTGOING).mkdir()
    _move(fresh, work / INCOMING)  # the commit point
    _fsync_dir(work)
    finish_interrupted_swap(profile)


def _move(src: Path, dst: Path) -> None:
    """One step of a swap: a rename within the mount point's filesystem."""
    src.rename(dst)


def finish_interrupted_swap(profile: Path) -> bool:
    """Complete a swap a crash interrupted after its commit point (True), or clear what an
    uncommitted one left (False). Runs before every restore into the profile."""
    work = work_area(profile)
    incoming, outgoing, retired = work / INCOMING, work / OUTGOING, work / RETIRED
    if not work.is_dir():
        return False
    if not incoming.is_dir():
        if outgoing.is_dir():  # created just before a commit point never reached: empty
            for entry in list(outgoing.iterdir()):
                _move(entry, profile / entry.name)
            outgoing.rmdir()
        shutil.rmtree(retired, ignore_errors=True)
        for leftover in work.glob(f"{RESTORE_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return False
    if not retired.is_dir():
        outgoing.mkdir(exist_ok=True)
        for entry in list(profile.iterdir()):
            if entry.name != WORK_DIR_NAME:
                _move(entry, outgoing / entry.name)
        _move(outgoing, retired)  # the second phase begins
        _fsync_dir(work)
    for entry in list(incoming.iterdir()):
        if os.path.lexists(profile / entry.name):
            # Written after the old entries went (nothing should be): set aside, then dropped.
            _move(profile / entry.name, retired / f"{entry.name}.{uuid.uuid4().hex[:8]}")
        _move(entry, profile / entry.name)
    incoming.rmdir()
    _fsync_dir(profile)
    shutil.rmtree(retired, ignore_errors=True)
    return True
