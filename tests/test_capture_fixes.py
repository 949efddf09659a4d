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
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import plyvel
import pytest

import app.snapshot.staging as staging_mod
from app.snapshot.keep import KeepRules
from app.snapshot.staging import capture, clear_stale_staging
from app.snapshot.validate import validate_tree
from tests.support.profile_tree import BLOBS, IDB, SW_DB, SW_SCRIPTS, ProfileTree

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
    try:
        deadline = time.monotonic() + 30
        while commits.value < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert commits.value >= 20, "the writer never got going"
        first = commits.value
        for _ in range(60):
            tree = capture(live, tmp_path / "work", KeepRules(), attempts=10, retry_delay=0.01)
            reason = _torn(tree.root / "Default/Cookies")
            if reason:
                torn.append(reason)
            clear_stale_staging(tmp_path / "work")
    finally:
        stop.set()
        writer.join(30)
    assert commits.value - first >= 30, "the writer hardly wrote during the captures"
    assert torn == [], f"{len(torn)} of 60 captures torn: {torn[:3]}"



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
