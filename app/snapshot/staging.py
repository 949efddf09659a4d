"""Consistent capture of a live profile directory.

Copying a profile slowly while Chromium writes tears it: the copied LevelDB MANIFEST names
tables the copy lacks, and Chromium silently deletes that IndexedDB at the next launch. So the
kept files are first staged fast on the same filesystem (immutable files hard-linked, the rest
copied), the staged copy is validated, and only a valid staged copy is chunked and uploaded.
The live folder is never streamed into the database.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import CaptureInvalid
from app.snapshot.keep import KeepRules, in_service_worker, is_immutable, unpaired_service_workers
from app.snapshot.manifest import DirEntry
from app.snapshot.validate import Problem, validate_tree

STAGING_PREFIX = "staging-"


@dataclass(frozen=True, slots=True)
class LiveStat:
    """What a file looked like in the live profile just before it was staged."""

    size: int
    mtime_ns: int
    ino: int
    dev: int
    mode: int


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A file in the staged copy with the live stat it was taken from."""

    path: str
    size: int
    mode: int
    live: LiveStat
    linked: bool


@dataclass(slots=True)
class StagedTree:
    """A validated staged copy, ready to be chunked."""

    root: Path
    files: list[StagedFile]
    dirs: list[DirEntry]
    started_ns: int
    attempts: int
    notes: list[str] = field(default_factory=list)


def work_dir_for(profile: Path) -> Path:
    """Sibling directory of the profile for staging and local caches (same filesystem)."""
    profile = profile.absolute()
    return profile.parent / f".{profile.name}.sessionkeeper"


def _walk(profile: Path, rules: KeepRules) -> tuple[dict[str, LiveStat], dict[str, int]]:
    """Kept files (with stats) and kept directories (with modes) of the live profile."""
    files: dict[str, LiveStat] = {}
    dirs: dict[str, int] = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(profile / rel_dir if rel_dir else profile))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if rules.prunes_dir(rel):
                    continue
                if rules.keeps(rel):
                    dirs[rel] = stat.S_IMODE(st.st_mode)
                stack.append(rel)
            elif stat.S_ISREG(st.st_mode) and rules.keeps(rel):
                files[rel] = LiveStat(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev,
                                      stat.S_IMODE(st.st_mode))
    return files, dirs


def _drop_unpaired(files: dict[str, LiveStat], dirs: dict[str, int], notes: list[str]) -> None:
    for prof in unpaired_service_workers(files):
        notes.append(f"service_worker_unpaired {prof}")
        for rel in [r for r in files if in_service_worker(r, prof)]:
            del files[rel]
        for rel in [r for r in dirs if in_service_worker(r, prof)]:
            del dirs[rel]


def _stage_file(src: Path, dst: Path, live: LiveStat, link: bool) -> bool:
    """Put one file into staging; False if it vanished meanwhile."""
    if link:
        try:
            os.link(src, dst)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    try:
        shutil.copyfile(src, dst)
    except FileNotFoundError:
        return False
    os.utime(dst, ns=(live.mtime_ns, live.mtime_ns))
    return True


def stage(profile: Path, staging: Path, rules: KeepRules) -> StagedTree:
    """Copy the kept files of profile into staging (which must not exist) as fast as possible."""
    started = time.time_ns()
    notes: list[str] = []
    files, dirs = _walk(profile, rules)
    _drop_unpaired(files, dirs, notes)
    staging.mkdir(parents=True)
    needed_dirs = set(dirs)
    for rel in files:
        parts = rel.split("/")
        needed_dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for rel in sorted(needed_dirs):
        (staging / rel).mkdir(exist_ok=True)
    # Metadata first (CURRENT, MANIFEST, logs), tables and blobs last: the copy spans the
    # shortest possible window, and validation catches what still moved.
    order = sorted(files, key=is_immutable)
    linked = {rel: _stage_file(profile / rel, staging / rel, files[rel], is_immutable(rel))
              for rel in order}
    staged_files = []
    for rel, live in files.items():
        if not linked[rel]:
            continue
        try:
            st = (staging / rel).stat()
        except FileNotFoundError:
            continue  # consumed by validation (a SQLite journal)
        staged_files.append(StagedFile(rel, st.st_size, live.mode, live, is_immutable(rel)))
    dir_entries = [DirEntry(rel, dirs.get(rel, 0o700)) for rel in sorted(needed_dirs)]
    return StagedTree(staging, staged_files, dir_entries, started, 1, notes)


def _refresh(tree: StagedTree) -> None:
    """Drop files validation consumed (a hot journal) and pick up their new sizes."""
    kept = []
    for f in tree.files:
        try:
            st = (tree.root / f.path).stat()
        except FileNotFoundError:
            continue
        kept.append(StagedFile(f.path, st.st_size, f.mode, f.live, f.linked)
                    if st.st_size != f.size else f)
    tree.files = kept


def capture(
    profile: Path, work_dir: Path, rules: KeepRules, attempts: int = 5,
    retry_delay: float = 0.2,
) -> StagedTree:
    """Stage and validate, retrying a torn copy; CaptureInvalid when every attempt was torn."""
    if not profile.is_dir():
        raise CaptureInvalid(f"profile directory {profile} does not exist")
    work_dir.mkdir(parents=True, exist_ok=True)
    problems: list[Problem] = []
    for attempt in range(1, attempts + 1):
        staging = work_dir / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tree = stage(profile, staging, rules)
            problems = validate_tree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not problems:
            tree.attempts = attempt
            _refresh(tree)
            return tree
        shutil.rmtree(staging, ignore_errors=True)
        if attempt < attempts:
            time.sleep(retry_delay * attempt)
    shown = "; ".join(f"{p.path}: {p.reason}" for p in problems[:3])
    raise CaptureInvalid(
        f"the profile stayed inconsistent over {attempts} staged copies ({shown})"
    )


def clear_stale_staging(work_dir: Path) -> None:
    """Remove staging folders left by a process that died mid-capture."""
    if not work_dir.is_dir():
        return
    for entry in work_dir.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
