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
from app.log import get_logger
from app.private_files import DIR_MODE, owner_only, private_dir
from app.snapshot.keep import (
    SW_DATABASE,
    SW_SCRIPTS,
    WORK_DIR_NAME,
    KeepRules,
    in_service_worker,
    is_immutable,
    unpaired_service_workers,
)
from app.snapshot.manifest import DirEntry
from app.snapshot.mounts import is_mount_point
from app.snapshot.sqlite_copy import Unstable, copy_group, is_sqlite, members
from app.snapshot.validate import Problem, validate_tree

STAGING_PREFIX = "staging-"
# Tells this process's staging folders from those of an earlier process with the same pid
# (containers often reuse the pid of the previous run).
_PROCESS_TOKEN = uuid.uuid4().hex[:8]
# Why a hard link can fail, for which staging copies the file instead.
_LINK_FALLBACKS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP)
# (profile device, staging device, errno) already reported: said once per process.
_said_copying: set[tuple[int, int, int]] = set()


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
    # Structured events for the log: {"event": ..., **fields}.
    notes: list[dict[str, object]] = field(default_factory=list)
    # What staging itself found torn (a SQLite file that never held still).
    problems: list[Problem] = field(default_factory=list)


def work_dir_for(profile: Path) -> Path:
    """Directory for staging and local caches, on the profile's filesystem (hard links need
    it): beside the profile, or inside it when the profile is a mount point (a volume), whose
    parent is another filesystem."""
    profile = profile.absolute()
    if is_mount_point(profile):
        return profile / WORK_DIR_NAME
    return profile.parent / f".{profile.name}.sessionkeeper"


def _live(st: os.stat_result) -> LiveStat:
    return LiveStat(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev,
                    owner_only(stat.S_IMODE(st.st_mode), directory=False))


def _walk(profile: Path, rules: KeepRules) -> tuple[dict[str, LiveStat], dict[str, int]]:
    """Kept files (with stats) and kept directories (with modes) of the live profile."""
    return _scan(profile, rules, "")


def _scan(profile: Path, rules: KeepRules,
          top: str) -> tuple[dict[str, LiveStat], dict[str, int]]:
    """Kept files and directories under profile/top (the whole profile for "")."""
    files: dict[str, LiveStat] = {}
    dirs: dict[str, int] = {}
    stack = [top]
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
                    dirs[rel] = owner_only(stat.S_IMODE(st.st_mode), directory=True)
                stack.append(rel)
            elif stat.S_ISREG(st.st_mode) and rules.keeps(rel):
                files[rel] = _live(st)
    return files, dirs


def _drop_unpaired(
    files: dict[str, LiveStat], dirs: dict[str, int], notes: list[dict[str, object]]
) -> None:
    for prof in unpaired_service_workers(files):
        notes.append({"event": "service_worker_unpaired", "profile": prof})
        for rel in [r for r in files if in_service_worker(r, prof)]:
            del files[rel]
        for rel in [r for r in dirs if in_service_worker(r, prof)]:
            del dirs[rel]


def _say_copying(src: Path, dst: Path, exc: OSError) -> None:
    """Log, once per pair of filesystems, that files are copied where they would be linked:
    every table and blob is then read and written again at each capture."""
    try:
        key = (src.stat().st_dev, dst.parent.stat().st_dev, exc.errno or 0)
    except OSError:
        return
    if key in _said_copying:
        return
    _said_copying.add(key)
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    get_logger().warning(
        "staging_copying", reason=f"os.link: {exc.strerror} ({name})", source=str(src),
        staging=str(dst), note="tables and blobs are copied, not linked, at every capture")


def _stage_file(src: Path, dst: Path, live: LiveStat, link: bool) -> bool:
    """Put one file into staging; False if it vanished meanwhile."""
    if link:
        try:
            os.link(src, dst)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno not in _LINK_FALLBACKS:
                raise
            _say_copying(src, dst, exc)
    try:
        shutil.copyfile(src, dst)
    except FileNotFoundError:
        return False
    os.utime(dst, ns=(live.mtime_ns, live.mtime_ns))
    return True


def _is_pinned(rel: str) -> bool:
    """LevelDB logs and MANIFESTs: appended to, then deleted when LevelDB rotates them."""
    name = rel.rsplit("/", 1)[-1]
    return name.endswith(".log") or name.startswith("MANIFEST-")


def _unpin(path: Path) -> None:
    """Turn a pinning hard link into an independent copy of the file as it is now."""
    tmp = path.with_name(path.name + ".sk-copy")
    shutil.copyfile(path, tmp)
    st = path.stat()
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    tmp.replace(path)


def _catch_up(profile: Path, rules: KeepRules, files: dict[str, LiveStat]) -> dict[str, LiveStat]:
    """Files that appeared in LevelDB folders since the walk (new tables, logs, MANIFEST)."""
    folders = {rel.rsplit("/", 1)[0] for rel in files if rel.endswith("/CURRENT")}
    found: dict[str, LiveStat] = {}
    for folder in folders:
        try:
            entries = list(os.scandir(profile / folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            rel = f"{folder}/{entry.name}"
            if rel in files or not rules.keeps(rel):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[rel] = _live(st)
    return found


def _referencing_folders(files: dict[str, LiveStat]) -> list[str]:
    """Folders whose files a LevelDB names: IndexedDB's `.blob` folder beside its `.leveldb`,
    the service worker's `ScriptCache` beside its `Database`."""
    found = []
    for rel in files:
        folder, _, name = rel.rpartition("/")
        if name != "CURRENT":
            continue
        if folder.endswith(".indexeddb.leveldb"):
            found.append(folder.removesuffix(".leveldb") + ".blob")
        elif folder == SW_DATABASE or folder.endswith(f"/{SW_DATABASE}"):
            found.append(folder.removesuffix(SW_DATABASE) + SW_SCRIPTS)
    return found


def _stage_sqlite(profile: Path, staging: Path, db: str, rules: KeepRules,
                  files: dict[str, LiveStat], present: dict[str, bool],
                  problems: list[Problem]) -> None:
    """Stage a SQLite database with its journal and WAL as of one instant."""
    names = members(db, rules.keeps)
    folder = db.rpartition("/")[0]
    try:
        stats = copy_group(profile / folder, staging / folder,
                           [n.rpartition("/")[2] for n in names])
    except Unstable as exc:
        problems.append(Problem(db, f"sqlite_unstable {exc}"))
        present.update(dict.fromkeys(names, False))
        return
    for rel in names:
        st = stats[rel.rpartition("/")[2]]
        present[rel] = st is not None
        if st is not None:
            files[rel] = _live(st)


def stage(profile: Path, staging: Path, rules: KeepRules) -> StagedTree:
    """Copy the kept files of profile into staging (which must not exist) as fast as possible.

    Order matters for LevelDB. Tables are hard-linked first, and logs and MANIFESTs are
    pinned by a hard link too: a link keeps a file's data even when a compaction or a log
    rotation deletes it a moment later. Then CURRENT and the other small files are copied,
    files that appeared meanwhile in LevelDB folders are picked up, and each pinned log and
    MANIFEST is turned into a plain copy of its content at that moment (a log may then hold
    records newer than its MANIFEST, which LevelDB replays). Validation catches what still
    slipped through, and the capture is retried.
    """
    started = time.time_ns()
    notes: list[dict[str, object]] = []
    problems: list[Problem] = []
    files, dirs = _walk(profile, rules)
    _drop_unpaired(files, dirs, notes)
    staging.mkdir(mode=DIR_MODE, parents=True)
    for d in _dir_entries(files, dirs):
        (staging / d.path).mkdir(mode=DIR_MODE, exist_ok=True)

    def put(rel: str, live: LiveStat) -> bool:
        link = is_immutable(rel) or _is_pinned(rel)
        return _stage_file(profile / rel, staging / rel, live, link)

    linked_first = [rel for rel in files if is_immutable(rel) or _is_pinned(rel)]
    linked = set(linked_first)
    databases = [rel for rel in files if rel not in linked and is_sqlite(profile / rel)]
    grouped = {m for db in databases for m in members(db, rules.keeps)}
    copied = sorted((rel for rel in files if rel not in linked and rel not in grouped),
                    key=lambda r: r.rsplit("/", 1)[-1] != "CURRENT")
    present = {rel: put(rel, files[rel]) for rel in [*linked_first, *copied]}
    for db in databases:
        _stage_sqlite(profile, staging, db, rules, files, present, problems)
    # Freeze the MANIFESTs now: every table they name exists at this moment, and is linked
    # already or picked up right below.
    for rel in files:
        if present[rel] and rel.rsplit("/", 1)[-1].startswith("MANIFEST-"):
            _unpin(staging / rel)
    late = _catch_up(profile, rules, files)
    for rel in sorted(late, key=lambda r: not (is_immutable(r) or _is_pinned(r))):
        files[rel] = late[rel]
        present[rel] = put(rel, late[rel])
    for rel in files:
        if present[rel] and _is_pinned(rel) and (staging / rel).stat().st_nlink > 1:
            _unpin(staging / rel)
    # The logs are copied: what they name is written by now (IndexedDB writes a blob before
    # it commits the record naming it; a service worker's script before its registration).
    for folder in _referencing_folders(files):
        new_files, new_dirs = _scan(profile, rules, folder)
        for rel in sorted(r for r in new_dirs if r not in dirs):
            dirs[rel] = new_dirs[rel]
            (staging / rel).mkdir(parents=True, exist_ok=True)
        for rel in sorted(r for r in new_files if r not in files):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            files[rel] = new_files[rel]
            present[rel] = put(rel, new_files[rel])
    staged_files = []
    for rel, live in files.items():
        if not present[rel]:
            continue
        st = (staging / rel).stat()
        staged_files.append(StagedFile(rel, st.st_size, live.mode, live, is_immutable(rel)))
    return StagedTree(staging, staged_files, _dir_entries(files, dirs), started, 1, notes,
                      problems)


def _dir_entries(files: dict[str, LiveStat], dirs: dict[str, int]) -> list[DirEntry]:
    """The kept directories plus every parent of a kept file, sorted (parents first)."""
    needed = set(dirs)
    for rel in files:
        parts = rel.split("/")
        needed.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return [DirEntry(rel, dirs.get(rel, 0o700)) for rel in sorted(needed)]


def scan_live(profile: Path, rules: KeepRules) -> tuple[dict[str, LiveStat], list[DirEntry]]:
    """The kept files and directories of the live profile as a capture would stage them,
    without staging anything: enough to tell, with the stat cache, that nothing changed."""
    files, dirs = _walk(profile, rules)
    _drop_unpaired(files, dirs, [])
    return files, _dir_entries(files, dirs)


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
    private_dir(work_dir)
    problems: list[Problem] = []
    retried: list[dict[str, object]] = []
    for attempt in range(1, attempts + 1):
        staging = work_dir / (
            f"{STAGING_PREFIX}{os.getpid()}-{_PROCESS_TOKEN}-{uuid.uuid4().hex[:8]}")
        try:
            tree = stage(profile, staging, rules)
            problems = [*tree.problems, *validate_tree(staging)]
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not problems:
            tree.attempts = attempt
            tree.notes.extend(retried)
            _refresh(tree)
            return tree
        retried.append({"event": "capture_retried", "attempt": attempt,
                        "path": problems[0].path, "reason": problems[0].reason,
                        "problems": len(problems)})
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
        if not (entry.name.startswith(STAGING_PREFIX) and entry.is_dir()):
            continue
        pid, _, rest = entry.name[len(STAGING_PREFIX):].partition("-")
        if pid == str(os.getpid()):
            if rest.startswith(_PROCESS_TOKEN):
                continue  # a capture of this very process is under way
        elif pid.isdigit() and pid_alive(int(pid)):
            continue  # another live process is capturing right now
        shutil.rmtree(entry, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists on this host (ours to signal or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
