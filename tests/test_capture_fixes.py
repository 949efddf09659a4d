"""Capture and restore paths a review found (issue 12 items 3, 5, 6; issue 17 item 2), each
reproduced before its fix.

Real profile-shaped trees, real LevelDB (plyvel) and SQLite written by another process while
they are captured, real PostgreSQL where the vault is involved, and a real mount point (a tmpfs
or a bind mount) where the sandbox permits mounting. Where a moment must be hit exactly, a
hook is put on the one internal step named in the test's docstring.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
import shutil
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import asyncpg
import plyvel
import pytest
import structlog

import app.snapshot.staging as staging_mod
import app.vault.inplace as inplace
import app.vault.restore as restore_mod
from app.errors import CaptureInvalid
from app.snapshot.keep import KeepRules
from app.snapshot.mounts import is_mount_point
from app.snapshot.staging import capture, clear_stale_staging, work_dir_for
from app.snapshot.validate import validate_tree
from app.vault.manifests import load_manifest
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from tests.support.profile_tree import BLOBS, IDB, SW_DB, SW_SCRIPTS, ProfileTree, tree_files

pytestmark = pytest.mark.anyio
SPAWN = mp.get_context("spawn")  # the writers are other processes, as Chromium's are


# --- item 5: files a LevelDB log names, written between the walk and the log copy ------------


def _hook_after_walk(monkeypatch: pytest.MonkeyPatch, action: Any) -> None:
    """Hook (named): run `action` once, right after staging's directory walk returned, so a
    write lands between the walk and the copy of the LevelDB logs."""
    real_walk = staging_mod._walk
    done: list[bool] = []

    def walk_then_write(profile: Path, rules: KeepRules) -> Any:
        result = real_walk(profile, rules)
        if not done:
            done.append(True)
            action()
        return result

    monkeypatch.setattr(staging_mod, "_walk", walk_then_write)


def test_a_blob_stored_between_the_walk_and_the_log_copy_is_captured(
        profile: ProfileTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IndexedDB writes a stored file's blob, then commits the record that names it to the
    log. Both land after the walk but before the log is copied: the copied log names the blob,
    so the capture must hold it (or Chromium serves NotFoundError for that file)."""
    db = profile.idb()  # open all along, as in a running Chromium
    blob = profile.root / BLOBS / "1" / "01" / "100"  # in a bucket folder the walk never saw
    content = random.Random(5).randbytes(80_000)

    def store_a_file() -> None:
        blob.parent.mkdir(parents=True)
        blob.write_bytes(content)
        db.put(b"file-record", b"blob 0x100")

    _hook_after_walk(monkeypatch, store_a_file)
    try:
        tree = capture(profile.root, tmp_path / "work", KeepRules())
    finally:
        db.close()
    copy = open_copy(tree.root / IDB, tmp_path)
    try:
        assert copy.get(b"file-record") == b"blob 0x100"  # the copied log names the blob
    finally:
        copy.close()
    rel = blob.relative_to(profile.root).as_posix()
    assert rel in {f.path for f in tree.files}
    assert (tree.root / rel).read_bytes() == content
    assert rel.rsplit("/", 1)[0] in {d.path for d in tree.dirs}


def test_a_script_cached_between_the_walk_and_the_log_copy_is_captured(
        profile: ProfileTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service worker's `Database` names scripts kept in `ScriptCache`: a script stored
    after the walk and registered before the Database log is copied must be captured."""
    sw = plyvel.DB(str(profile.root / SW_DB))
    script = profile.root / SW_SCRIPTS / "9c1d_0"

    def register_a_script() -> None:
        script.write_bytes(b"self.addEventListener('push', () => {});")
        sw.put(b"RES:9c1d", b"script 9c1d_0")

    _hook_after_walk(monkeypatch, register_a_script)
    try:
        tree = capture(profile.root, tmp_path / "work", KeepRules())
    finally:
        sw.close()
    copy = open_copy(tree.root / SW_DB, tmp_path)
    try:
        assert copy.get(b"RES:9c1d") == b"script 9c1d_0"
    finally:
        copy.close()
    assert f"{SW_SCRIPTS}/9c1d_0" in {f.path for f in tree.files}
    assert (tree.root / SW_SCRIPTS / "9c1d_0").read_bytes() == script.read_bytes()


# --- item 6: SQLite captured while another process writes it ---------------------------------

_ROWS = 1000


def sqlite_writer(path: str, journal_mode: str, commits: Synchronized[int], stop: Any) -> None:
    """Another process writes the cookie store like Chromium does: transactions that touch many
    rows and an index. Invariant: meta.total equals sum(cookies.n)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA journal_mode={journal_mode}")
    con.execute("PRAGMA synchronous=OFF")  # no fsync: many more commits to race with
    con.execute("CREATE TABLE IF NOT EXISTS cookies "
                "(name TEXT PRIMARY KEY, value TEXT NOT NULL, n INTEGER NOT NULL)")
    con.execute("CREATE INDEX IF NOT EXISTS cookies_value ON cookies(value)")
    con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, total INTEGER NOT NULL)")
    con.execute("BEGIN")
    for i in range(_ROWS):
        con.execute("INSERT OR IGNORE INTO cookies VALUES (?, ?, 0)", (f"c{i}", "x" * 300))
    con.execute("INSERT OR IGNORE INTO meta VALUES ('total', 0)")
    con.execute("COMMIT")
    rng = random.Random(7)
    done = 0
    while not stop.is_set():
        con.execute("BEGIN")
        picked = rng.sample(range(_ROWS), 100)
        for i in picked:
            con.execute("UPDATE cookies SET value = ?, n = n + 1 WHERE name = ?",
                        (rng.randbytes(150).hex(), f"c{i}"))
        con.execute("UPDATE meta SET total = total + ?", (len(picked),))
        con.execute("COMMIT")
        done += 1
        commits.value = done
    con.close()


def _torn(db: Path) -> str | None:
    """Why a staged cookie store is torn (a hot journal is rolled back first, as Chromium
    would at launch); None when it is whole and its invariant holds."""
    con = sqlite3.connect(db)
    try:
        check = con.execute("PRAGMA integrity_check").fetchall()
        if check != [("ok",)]:
            return f"integrity_check: {check[:2]}"
        total = con.execute("SELECT total FROM meta").fetchone()[0]
        counted = con.execute("SELECT sum(n), count(*) FROM cookies").fetchone()
        if (counted[0], counted[1]) != (total, _ROWS):
            return f"rows say {counted}, meta says {total}"
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        con.close()
    return None


@pytest.mark.parametrize("journal_mode", ["TRUNCATE", "DELETE"])
def test_a_cookie_store_written_during_capture_is_never_torn(
        tmp_path: Path, journal_mode: str) -> None:
    """The cookie store and its journal are written by another process all through 60
    captures: every staged copy must be whole (integrity_check, not quick_check, which misses
    a table/index mismatch) with its invariant intact."""
    live = tmp_path / "profile"
    (live / "Default").mkdir(parents=True)
    (live / "Local State").write_text("{}")
    commits = SPAWN.Value("q", 0, lock=False)
    stop = SPAWN.Event()
    writer = SPAWN.Process(target=sqlite_writer,
                           args=(str(live / "Default/Cookies"), journal_mode, commits, stop))
    writer.start()
    torn: list[str] = []
    gave_up = 0
    try:
        deadline = time.monotonic() + 30
        while commits.value < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert commits.value >= 20, "the writer never got going"
        first = commits.value
        for _ in range(60):
            try:
                tree = capture(live, tmp_path / "work", KeepRules(), attempts=10,
                               retry_delay=0.01)
            except CaptureInvalid:
                gave_up += 1  # never still over 10 copies: refused, which is no torn copy
            else:
                reason = _torn(tree.root / "Default/Cookies")
                if reason:
                    torn.append(reason)
            clear_stale_staging(tmp_path / "work")
    finally:
        stop.set()
        writer.join(30)
    assert commits.value - first >= 30, "the writer hardly wrote during the captures"
    assert torn == [], f"{len(torn)} of 60 captures torn: {torn[:3]}"
    assert gave_up <= 20, f"{gave_up} of 60 captures never held still"



# --- issue 17 item 2: a torn capture is retried until valid, attempts counted ------------------

_KEYS = 10_000


def leveldb_writer(folder: str, written: Synchronized[int], stop: Any) -> None:
    """Another process writes a LevelDB much faster than any site: 1 KiB values into a 16 KiB
    write buffer, so tables appear and compactions delete them all the time. Each value holds
    its write number and a digest of its body."""
    db = plyvel.DB(folder, create_if_missing=True, write_buffer_size=16 * 1024)
    rng = random.Random(11)

    def value(i: int) -> bytes:
        body = rng.randbytes(1024)
        return i.to_bytes(8, "big") + hashlib.sha256(body).digest() + body

    with db.write_batch() as batch:  # every key at once, then one write after another
        for i in range(_KEYS):
            batch.put(b"k%08d" % i, value(i))
    i = written.value = _KEYS
    while not stop.is_set():
        db.put(b"k%08d" % (i % _KEYS), value(i))
        i += 1
        written.value = i
    db.close()


def open_copy(folder: Path, tmp_path: Path) -> Any:
    """A staged LevelDB opened through a copy of its own: staged tables are hard links to the
    live ones, and LevelDB opened in place would create its next files with O_TRUNC, which
    can truncate a live table that staging linked under the same number."""
    private = tmp_path / f"opened-{time.monotonic_ns()}"
    shutil.copytree(folder, private)
    return plyvel.DB(str(private), paranoid_checks=True)


def _check_leveldb_copy(folder: Path, tmp_path: Path, written: int, every_value: bool) -> None:
    """The staged copy opens (LevelDB refuses one whose MANIFEST names missing tables) and
    holds the last write made before the capture began; with every_value, every value
    matches its digest and no key is missing."""
    db = open_copy(folder, tmp_path)
    try:
        last = db.get(b"k%08d" % ((written - 1) % _KEYS))
        assert last is not None and int.from_bytes(last[:8], "big") >= written - 1
        if every_value:
            count = 0
            for _key, value in db.iterator():
                assert hashlib.sha256(value[40:]).digest() == value[8:40]
                count += 1
            assert count == _KEYS
    finally:
        db.close()


def test_a_torn_leveldb_capture_is_retried_until_valid(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real LevelDB written so fast that some staged copies tear (the real validator finds
    a MANIFEST naming a table a compaction deleted meanwhile). Each call of staging's stage()
    is one real staged copy and is counted; captures go on until one needed more than one
    copy. Every capture must end valid, and at least one must have been retried: a capture
    that stages once fails here (torn, or never retried)."""
    live = tmp_path / "profile"
    folder = live / IDB
    folder.mkdir(parents=True)
    (live / "Local State").write_text("{}")
    written = SPAWN.Value("q", 0, lock=False)
    stop = SPAWN.Event()
    writer = SPAWN.Process(target=leveldb_writer, args=(str(folder), written, stop))
    writer.start()
    staged: list[Path] = []
    real_stage = staging_mod.stage

    def counted_stage(profile: Path, staging: Path, rules: KeepRules) -> Any:
        staged.append(staging)
        return real_stage(profile, staging, rules)

    monkeypatch.setattr(staging_mod, "stage", counted_stage)
    attempts: list[int] = []
    reasons: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while written.value < _KEYS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written.value >= _KEYS, "the writer never filled its keys"
        filled = time.monotonic()
        deadline = time.monotonic() + 45
        while (max(attempts, default=1) == 1 or len(attempts) < 3) \
                and time.monotonic() < deadline:
            before, last_write = len(staged), written.value
            tree = capture(live, tmp_path / "work", KeepRules(), attempts=10, retry_delay=0.01)
            made = len(staged) - before
            attempts.append(made)
            assert tree.attempts == made
            retried = [n for n in tree.notes if n["event"] == "capture_retried"]
            assert len(retried) == made - 1
            reasons.extend(str(n["reason"]) for n in retried)
            if made > 1:  # a retried capture is opened and read through
                _check_leveldb_copy(tree.root / IDB, tmp_path, last_write, every_value=True)
            else:
                assert validate_tree(tree.root) == []
            clear_stale_staging(tmp_path / "work")
        # The last capture, retried or not, opens and holds the writes made before it.
        tree = capture(live, tmp_path / "work", KeepRules(), attempts=10, retry_delay=0.01)
        _check_leveldb_copy(tree.root / IDB, tmp_path, last_write, every_value=True)
    finally:
        stop.set()
        writer.join(30)
    print("staged copies per capture:", attempts, reasons,
          f"in {time.monotonic() - filled:.1f} s")
    assert max(attempts) > 1, f"no capture was torn in {len(attempts)}: {attempts}"


# --- item 3: a profile folder that is a mount point ------------------------------------------


@pytest.fixture(params=["tmpfs", "bind"])
def mount_point(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A real mount point at the profile path: a tmpfs (another filesystem, as a volume is),
    or a bind mount of a folder of the same filesystem (os.path.ismount does not see it).
    Skipped, with the reason, where this sandbox does not permit mounting."""
    target = tmp_path / "mounted" / "profile"
    target.mkdir(parents=True)
    if request.param == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=256m,mode=700", "sk-test", str(target)]
    else:
        volume = tmp_path / "volume"
        volume.mkdir()
        cmd = ["mount", "--bind", str(volume), str(target)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here: a mount point cannot be made")
    if done.returncode != 0:
        pytest.skip(f"mounting is not permitted here ({done.stderr.strip()}): the restore "
                    "into a mount point is not exercised")
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _profile_files(root: Path) -> dict[str, bytes]:
    """The profile's files, without our work folder inside a mount point."""
    return {k: v for k, v in tree_files(root).items() if not k.startswith(".sessionkeeper/")}


async def test_a_profile_folder_that_is_a_mount_point_restores(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        mount_point: Path) -> None:
    """A volume at the profile path can be neither renamed nor exchanged (EBUSY). The restore
    swaps its contents instead: the mount stays, what was in it goes, the generation is in it
    exactly as a restore into a plain folder writes it, and a second restore works too."""
    await save_snapshot(pool, "s", profile.root, options)
    (mount_point / "Default").mkdir()
    (mount_point / "Default" / "stale").write_bytes(b"from an older life")
    (mount_point / "Local State").write_text("old")
    result = await restore_profile(pool, "s", mount_point)
    plain = tmp_path / "plain"
    await restore_profile(pool, "s", plain)
    assert result.generation == 1
    assert is_mount_point(mount_point)
    assert _profile_files(mount_point) == tree_files(plain)
    # Our work folder holds the stat cache and nothing a crash would have to finish.
    assert sorted(p.name for p in (mount_point / ".sessionkeeper").iterdir()) == \
        ["stat-cache-s.json"]

    profile.add_messages(40)
    await save_snapshot(pool, "s", profile.root, options)
    assert (await restore_profile(pool, "s", mount_point)).generation == 2
    await restore_profile(pool, "s", plain)
    assert _profile_files(mount_point) == tree_files(plain)


async def test_a_mount_point_profile_is_staged_by_links_on_its_own_filesystem(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions,
        mount_point: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staging beside a volume would be on another filesystem: the work folder of a mount
    point is inside it, so tables are hard-linked and nothing says `staging_copying`."""
    monkeypatch.setattr(staging_mod, "_said_copying", set(), raising=False)
    shutil.copytree(profile.root, mount_point, dirs_exist_ok=True, symlinks=True)
    assert work_dir_for(mount_point) == mount_point / ".sessionkeeper"
    with structlog.testing.capture_logs() as logs:
        first = await save_snapshot(pool, "s", mount_point, options)
    assert first.changed and "staging_copying" not in [e["event"] for e in logs]
    async with pool.acquire() as conn:
        kept = [f.path for f in (await load_manifest(conn, "s", 1)).manifest.files]
    assert kept and not any(p.startswith(".sessionkeeper") for p in kept)
    assert sorted(kept) == sorted(f for f in _profile_files(mount_point)
                                  if KeepRules().keeps(f))


async def test_staging_on_another_filesystem_says_so_once(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A work folder on another filesystem than the profile: os.link fails with EXDEV and
    every table is copied. It is said once, with the reason, not at every capture."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem (/dev/shm) to stage on")
    work = shm / f"sk-test-work-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(staging_mod, "_said_copying", set(), raising=False)
    try:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                profile.add_messages(20)
                await save_snapshot(pool, "s", profile.root, options, work_dir=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    said = [e for e in logs if e["event"] == "staging_copying"]
    assert len(said) == 1, said
    assert "EXDEV" in said[0]["reason"] and said[0]["log_level"] == "warning"


class Crash(BaseException):
    """The process dies here (nothing after it runs, no clean-up)."""


async def test_an_interrupted_swap_of_a_mount_point_is_finished_by_the_next_restore(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        mount_point: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contents swap is not one rename: a crash can stop it at any step. Injected (named):
    a crash at the n-th rename of the swap, for every n. The next restore either finds the old
    profile untouched (before the commit point) or finishes the swap; either way it ends with
    exactly the generation in the mount point, and nothing of ours left over."""
    await save_snapshot(pool, "s", profile.root, options)
    plain = tmp_path / "plain"
    await restore_profile(pool, "s", plain)
    want = tree_files(plain)
    real_move = inplace._move
    steps = 0
    for crash_at in range(1, 40):
        shutil.rmtree(mount_point / ".sessionkeeper", ignore_errors=True)
        for entry in list(mount_point.iterdir()):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        old = {"Local State": b"old", "Default/stale": b"old", "Default/Cookies": b"old"}
        for rel, data in old.items():
            (mount_point / rel).parent.mkdir(parents=True, exist_ok=True)
            (mount_point / rel).write_bytes(data)
        moves = 0

        def crashing_move(src: Path, dst: Path, at: int = crash_at) -> None:
            nonlocal moves
            moves += 1
            if moves == at:
                raise Crash(f"crash at rename {at}")
            real_move(src, dst)

        monkeypatch.setattr(inplace, "_move", crashing_move)
        try:
            await restore_profile(pool, "s", mount_point)
        except Crash:
            pass
        else:
            steps = crash_at - 1
            break
        monkeypatch.setattr(inplace, "_move", real_move)
        # Before the commit point (the first rename) the old profile is untouched.
        if crash_at == 1:
            assert _profile_files(mount_point) == old
        with structlog.testing.capture_logs() as logs:
            await restore_profile(pool, "s", mount_point)
        assert _profile_files(mount_point) == want, f"crash at rename {crash_at}"
        assert sorted(p.name for p in (mount_point / ".sessionkeeper").iterdir()) == \
            ["stat-cache-s.json"]
        finished = [e for e in logs if e["event"] == "restore_swap_finished"]
        assert len(finished) == (0 if crash_at == 1 else 1)
    assert steps > 5, "the swap never ran to its end"


async def test_a_mount_point_the_check_misses_is_restored_after_the_real_ebusy(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        mount_point: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should is_mount_point miss a mount (patched here to say no, named as such), the rename
    route meets the kernel's real EBUSY; nothing has changed then, and the tree is moved onto
    the mount's filesystem and its contents swapped."""
    await save_snapshot(pool, "s", profile.root, options)
    (mount_point / "stale").write_text("old")
    monkeypatch.setattr(restore_mod, "is_mount_point", lambda _path: False)
    with structlog.testing.capture_logs() as logs:
        await restore_profile(pool, "s", mount_point)
    done = [e for e in logs if e["event"] == "restore_completed"]
    assert done[0]["swapped"] == "contents_after_ebusy"
    plain = tmp_path / "plain"
    await restore_profile(pool, "s", plain)
    assert _profile_files(mount_point) == tree_files(plain)
    assert not list(mount_point.parent.glob(".profile.*"))
