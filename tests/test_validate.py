"""Staged-copy validation against real LevelDB (plyvel) and SQLite databases."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from pathlib import Path

import plyvel
import pytest

from app.snapshot import validate as v
from app.snapshot.validate import Problem, validate_leveldb, validate_sqlite, validate_tree

BLOCK = 32768

# Small buffers and tables so a few MB of data gives several tables on several levels.
DB_OPTIONS: dict[str, object] = {
    "write_buffer_size": 64 * 1024,
    "max_file_size": 64 * 1024,
    "compression": None,
}


def _fill(db: plyvel.DB, rnd: random.Random, count: int, key_len: int = 6) -> None:
    # Random keys over a small key space: overwrites make compactions rewrite and delete tables.
    for _ in range(count):
        key = b"key%0*d" % (key_len, rnd.randrange(1500))
        db.put(key, rnd.randbytes(rnd.randint(1024, 4096)))


def _compact_all(db: plyvel.DB) -> None:
    # plyvel's compact_range() with no bounds passes empty keys, not NULL, and compacts
    # nothing; explicit bounds give a full, synchronous compaction (no background work left).
    db.compact_range(start=b"", stop=b"\xff")


def _flush(db: plyvel.DB) -> None:
    # An empty range still flushes the memtable synchronously (DBImpl::CompactRange).
    db.compact_range(start=b"", stop=b"")


def _make_db(path: Path, seed: int, key_len: int = 6, count: int = 2500) -> None:
    """A closed, quiescent LevelDB with live tables on levels 0..2 and a non-empty log."""
    db = plyvel.DB(str(path), create_if_missing=True, **DB_OPTIONS)
    try:
        rnd = random.Random(seed)
        _fill(db, rnd, count, key_len)
        _compact_all(db)
        _fill(db, rnd, 40, key_len)
        _flush(db)
        _fill(db, rnd, 10, key_len)  # stays in the memtable: only in the .log
    finally:
        db.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "db"
    _make_db(path, seed=7)
    return path


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MANIFEST of several 32 KiB blocks with FIRST/MIDDLE/LAST fragments.

    Long keys make each table entry KBs long; reopening writes a new MANIFEST whose first
    record lists every live table, so that record spans blocks.
    """
    path = tmp_path_factory.mktemp("fragmented") / "db"
    _make_db(path, seed=3, key_len=4000, count=400)
    db = plyvel.DB(str(path))
    try:
        _compact_all(db)  # waits out any compaction the reopen scheduled
    finally:
        db.close()
    return path


@pytest.fixture
def db_copy(pristine: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "db"
    shutil.copytree(pristine, dest)
    return dest


def _tables(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.ldb"))


def _manifest(folder: Path) -> Path:
    return folder / (folder / "CURRENT").read_text().strip()


def _fragments(data: bytes) -> list[tuple[int, int, int]]:
    """(header offset, type, payload length) of each physical record, walked independently."""
    out: list[tuple[int, int, int]] = []
    for block in range(0, len(data), BLOCK):
        pos, end = block, min(block + BLOCK, len(data))
        while end - pos >= 7:
            length = int.from_bytes(data[pos + 4 : pos + 6], "little")
            out.append((pos, data[pos + 6], length))
            pos += 7 + length
    return out


def _leveldb_opens(folder: Path) -> bool:
    """Whether LevelDB itself recovers the folder (it modifies it: call last)."""
    try:
        plyvel.DB(str(folder), paranoid_checks=True).close()
    except plyvel.CorruptionError:
        return False
    return True


# --- parser against real LevelDB files ------------------------------------------------------


def test_parser_matches_leveldb_files(pristine: Path) -> None:
    version = v._recover(_manifest(pristine).read_bytes())
    live = {f"{number:06d}.ldb": size for (_, number), size in version.tables.items()}
    assert sorted(live) == _tables(pristine)
    assert len(live) >= 4
    assert {level for level, _ in version.tables} >= {0, 2}
    for name, size in live.items():
        assert (pristine / name).stat().st_size == size
    logs = sorted(p.name for p in pristine.glob("*.log"))
    assert logs == [f"{version.log_number:06d}.log"]
    assert (pristine / logs[0]).stat().st_size > 0


def test_parser_reassembles_fragmented_records(fragmented: Path) -> None:
    data = _manifest(fragmented).read_bytes()
    assert len(data) > 2 * BLOCK
    assert {rtype for _, rtype, _ in _fragments(data)} == {1, 2, 3, 4}
    version = v._recover(data)
    assert sorted(f"{n:06d}.ldb" for _, n in version.tables) == _tables(fragmented)
    assert validate_leveldb(fragmented) == []


def test_bad_length_in_full_block_is_corrupt(fragmented: Path, tmp_path: Path) -> None:
    folder = tmp_path / "db"
    shutil.copytree(fragmented, folder)
    manifest = _manifest(folder)
    data = bytearray(manifest.read_bytes())
    pos, _, _ = _fragments(bytes(data))[0]
    data[pos + 4 : pos + 6] = b"\xff\xff"  # longer than the (full) block: never written so
    manifest.write_bytes(bytes(data))
    assert validate_leveldb(folder) == [
        Problem(".", f"manifest_corrupt {manifest.name} bad record length at offset {pos}")
    ]


# --- intact databases -----------------------------------------------------------------------


def test_intact_closed_db_validates(db_copy: Path) -> None:
    assert validate_leveldb(db_copy) == []
    assert _leveldb_opens(db_copy)


def test_copy_of_open_db_validates(tmp_path: Path) -> None:
    live, copy = tmp_path / "live", tmp_path / "copy"
    db = plyvel.DB(str(live), create_if_missing=True, **DB_OPTIONS)
    try:
        rnd = random.Random(11)
        _fill(db, rnd, 2000)
        _compact_all(db)
        _fill(db, rnd, 60)  # one memtable switch, flushed in the background
        _flush(db)
        db.put(b"last", b"in the log only")
        shutil.copytree(live, copy)
    finally:
        db.close()
    assert validate_leveldb(copy) == []
    reopened = plyvel.DB(str(copy), paranoid_checks=True)
    try:
        assert reopened.get(b"last") == b"in the log only"
    finally:
        reopened.close()


def test_legacy_sst_name_is_accepted(db_copy: Path) -> None:
    name = _tables(db_copy)[0]
    (db_copy / name).rename(db_copy / name.replace(".ldb", ".sst"))
    assert validate_leveldb(db_copy) == []
    assert _leveldb_opens(db_copy)


# --- broken LevelDB folders -----------------------------------------------------------------


def test_missing_table(db_copy: Path) -> None:
    name = _tables(db_copy)[-1]
    (db_copy / name).unlink()
    assert validate_leveldb(db_copy) == [Problem(".", f"missing_table {name}")]
    assert not _leveldb_opens(db_copy)  # what Chromium sees before deleting the database


def test_truncated_table(db_copy: Path) -> None:
    name = _tables(db_copy)[0]
    size = (db_copy / name).stat().st_size
    with open(db_copy / name, "r+b") as f:
        f.truncate(size - 100)
    assert validate_leveldb(db_copy) == [
        Problem(".", f"table_size_mismatch {name} expected {size} got {size - 100}")
    ]


def test_missing_log(db_copy: Path) -> None:
    [log] = db_copy.glob("*.log")
    log.unlink()
    assert validate_leveldb(db_copy) == [Problem(".", f"missing_log {log.name}")]


def test_current_names_missing_manifest(db_copy: Path) -> None:
    (db_copy / "CURRENT").write_bytes(b"MANIFEST-999999\n")
    assert validate_leveldb(db_copy) == [Problem(".", "missing_manifest MANIFEST-999999")]


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\x00\xff", b"MANIFEST-000002", b"MANIFEST-abc\n", b"MANIFEST-000002\n\n"],
)
def test_current_malformed(db_copy: Path, content: bytes) -> None:
    (db_copy / "CURRENT").write_bytes(content)
    [problem] = validate_leveldb(db_copy)
    assert problem.reason.startswith("current_malformed")


def test_current_unreadable(tmp_path: Path) -> None:
    [problem] = validate_leveldb(tmp_path)  # no CURRENT at all
    assert problem.reason.startswith("current_unreadable")


def test_manifest_truncated_mid_record_is_tolerated(db_copy: Path) -> None:
    manifest = _manifest(db_copy)
    data = manifest.read_bytes()
    pos, _, length = _fragments(data)[-1]
    assert length >= 2
    manifest.write_bytes(data[: pos + 7 + length // 2])
    # Dropping the last edit may leave other problems, never a corrupt MANIFEST.
    assert not [p for p in validate_leveldb(db_copy) if p.reason.startswith("manifest_")]


def test_manifest_with_unfinished_append_validates(db_copy: Path) -> None:
    manifest = _manifest(db_copy)
    data = manifest.read_bytes()
    first_pos, _, first_len = _fragments(data)[0]
    record = data[first_pos : first_pos + 7 + first_len]
    room = BLOCK - len(data) % BLOCK
    pad = b"\x00" * room if room < 7 + 10 else b""  # block trailer, as the writer would
    # A whole copy of a record's header, but only part of its payload: the writer was mid-append.
    manifest.write_bytes(data + pad + record[: 7 + first_len // 2])
    assert validate_leveldb(db_copy) == []
    # A complete FIRST fragment whose LAST never came is also dropped silently.
    first = record[:6] + bytes([2]) + record[7:]
    manifest.write_bytes(data + pad + first)
    assert validate_leveldb(db_copy) == []


def test_manifest_garbage_in_middle(db_copy: Path) -> None:
    manifest = _manifest(db_copy)
    data = bytearray(manifest.read_bytes())
    frags = [f for f in _fragments(bytes(data)) if f[1] == 1 and f[2] >= 14]
    pos, _, _ = frags[len(frags) // 2]
    # Right after the first tag: a varint that never ends is corrupt whatever the tag was.
    data[pos + 8 : pos + 20] = b"\xff" * 12
    manifest.write_bytes(bytes(data))
    [problem] = validate_leveldb(db_copy)
    assert problem.reason.startswith(f"manifest_corrupt {manifest.name}")
    assert not _leveldb_opens(db_copy)


@pytest.mark.parametrize(
    ("new_type", "detail"),
    [
        (9, "unknown record type 9 at offset {pos}"),
        (2, "partial record without end at offset {next_pos}"),  # FIRST, then a FULL
        (3, "missing start of fragmented record at offset {pos}"),  # MIDDLE out of nowhere
        (4, "missing start of fragmented record at offset {pos}"),  # LAST out of nowhere
    ],
)
def test_manifest_bad_record_type(db_copy: Path, new_type: int, detail: str) -> None:
    manifest = _manifest(db_copy)
    data = bytearray(manifest.read_bytes())
    frags = _fragments(bytes(data))
    assert [rtype for _, rtype, _ in frags] == [1] * len(frags)  # one block: all FULL
    pos, _, length = frags[len(frags) // 2]
    assert length > 0
    data[pos + 6] = new_type
    manifest.write_bytes(bytes(data))
    expected = detail.format(pos=pos, next_pos=frags[len(frags) // 2 + 1][0])
    assert validate_leveldb(db_copy) == [
        Problem(".", f"manifest_corrupt {manifest.name} {expected}")
    ]


def test_manifest_unknown_tag(db_copy: Path) -> None:
    manifest = _manifest(db_copy)
    data = bytearray(manifest.read_bytes())
    pos, _, _ = next(f for f in _fragments(bytes(data)) if f[1] == 1 and f[2] > 0)
    data[pos + 7] = 8  # tag 8 (large value ref) was dropped from LevelDB long ago
    manifest.write_bytes(bytes(data))
    assert validate_leveldb(db_copy) == [
        Problem(".", f"manifest_corrupt {manifest.name} unknown tag 8")
    ]


def test_empty_manifest_is_incomplete(db_copy: Path) -> None:
    manifest = _manifest(db_copy)
    manifest.write_bytes(b"")
    assert validate_leveldb(db_copy) == [Problem(".", f"manifest_incomplete {manifest.name}")]


def test_torn_copy_is_detected(tmp_path: Path) -> None:
    # The real race: tables copied first, then Chromium compacts, then the MANIFEST is copied.
    live, copy = tmp_path / "live", tmp_path / "copy"
    copy.mkdir()
    db = plyvel.DB(str(live), create_if_missing=True, **DB_OPTIONS)
    try:
        rnd = random.Random(5)
        _fill(db, rnd, 1500)
        _compact_all(db)
        copied = set(_tables(live))
        for name in copied:
            shutil.copy2(live / name, copy / name)
        _fill(db, rnd, 1500)
        _compact_all(db)
        for path in [live / "CURRENT", _manifest(live), *live.glob("*.log")]:
            shutil.copy2(path, copy / path.name)
        now_live = set(_tables(live))  # quiescent after a full compaction: files == live set
    finally:
        db.close()
    missing = sorted(now_live - copied)
    assert missing
    assert validate_leveldb(copy) == [Problem(".", f"missing_table {n}") for n in missing]
    assert not _leveldb_opens(copy)


# --- SQLite ---------------------------------------------------------------------------------


def _make_sqlite(path: Path, rows: int = 2000) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body BLOB)")
        con.execute("CREATE INDEX t_name ON t(name)")
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO t(name, body) VALUES (?, ?)",
            [(f"name-{i:05d}", bytes([i % 256]) * 200) for i in range(rows)],
        )
        con.execute("COMMIT")
    finally:
        con.close()


def _overwrite_mid_page(path: Path) -> None:
    # 512 bytes across the middle of a page in the middle of the file: wide enough to hit cell
    # headers on any full page (a narrow overwrite can land in a blob, which no check sees).
    page_size = 4096
    page = path.stat().st_size // page_size // 2
    with open(path, "r+b") as f:
        f.seek(page * page_size + page_size // 2 - 256)
        f.write(b"\xff" * 512)


def test_sqlite_good(tmp_path: Path) -> None:
    db = tmp_path / "Cookies"
    _make_sqlite(db)
    assert validate_sqlite(db) == []


def test_sqlite_overwritten_page(tmp_path: Path) -> None:
    db = tmp_path / "Cookies"
    _make_sqlite(db)
    _overwrite_mid_page(db)
    [problem] = validate_sqlite(db)
    assert problem.path == "."
    assert problem.reason.startswith("sqlite_quick_check ")
    assert "\n" not in problem.reason


def test_sqlite_not_a_database_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    assert [p.reason.split()[0] for p in validate_sqlite(bad)] == ["sqlite_quick_check"]
    missing = tmp_path / "missing"
    assert len(validate_sqlite(missing)) == 1
    assert not missing.exists()  # not created by sqlite3.connect


def test_sqlite_hot_journal_is_rolled_back(tmp_path: Path) -> None:
    live = tmp_path / "live"
    with_journal, without_journal = tmp_path / "with", tmp_path / "without"
    for d in (live, with_journal, without_journal):
        d.mkdir()
    db = live / "History"
    _make_sqlite(db)
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA cache_size=10")  # spill: the db file itself changes mid-transaction
        con.execute("BEGIN")
        con.executemany(
            "UPDATE t SET name = ?, body = ? WHERE id = ?",
            [(f"x-{i}", b"u" * 300, i) for i in range(1, 2001, 3)],
        )
        con.executemany(
            "INSERT INTO t(name, body) VALUES (?, ?)",
            [(f"new-{i}", b"n" * 300) for i in range(1000)],
        )
        journal = live / "History-journal"
        assert journal.stat().st_size > 0
        shutil.copy(db, with_journal / "History")
        shutil.copy(journal, with_journal / "History-journal")
        shutil.copy(db, without_journal / "History")
    finally:
        con.execute("ROLLBACK")
        con.close()
    # Without its journal the half-written file is corrupt, which shows the journal matters.
    assert validate_sqlite(without_journal / "History") != []
    assert validate_sqlite(with_journal / "History") == []
    assert not (with_journal / "History-journal").exists()  # consumed by the rollback
    check = sqlite3.connect(with_journal / "History")
    try:
        assert check.execute("SELECT count(*), sum(name LIKE 'x-%') FROM t").fetchone() == (2000, 0)
    finally:
        check.close()


# --- tree walk ------------------------------------------------------------------------------


def test_tree_reports_nested_relative_paths_and_ignores_symlinks(
    pristine: Path, tmp_path: Path
) -> None:
    root, outside = tmp_path / "profile", tmp_path / "outside"
    default = root / "Default"
    idb = default / "IndexedDB" / "https_x_0.indexeddb.leveldb"
    shutil.copytree(pristine, idb)
    missing = _tables(idb)[0]
    (idb / missing).unlink()
    shutil.copytree(pristine, default / "Local Storage" / "leveldb")
    _make_sqlite(default / "Cookies")
    _make_sqlite(default / "History")
    _overwrite_mid_page(default / "History")
    (default / "Preferences").write_text('{"profile": {}}')
    (default / "IndexedDB" / "https_x_0.indexeddb.blob").mkdir()

    # Broken things reachable only through symlinks must not be reported (or followed).
    shutil.copytree(idb, outside / "broken.leveldb")
    shutil.copy(default / "History", outside / "corrupt.sqlite")
    (default / "link.leveldb").symlink_to(outside / "broken.leveldb", target_is_directory=True)
    (default / "link.sqlite").symlink_to(outside / "corrupt.sqlite")
    (default / "loop").symlink_to(root, target_is_directory=True)

    problems = validate_tree(root)
    assert sorted(p.path for p in problems) == [
        "Default/History",
        "Default/IndexedDB/https_x_0.indexeddb.leveldb",
    ]
    assert Problem("Default/IndexedDB/https_x_0.indexeddb.leveldb", f"missing_table {missing}") in (
        problems
    )


def test_tree_on_a_leveldb_folder_and_clean_tree(db_copy: Path, tmp_path: Path) -> None:
    assert validate_tree(db_copy) == []
    (db_copy / "CURRENT").write_bytes(b"junk")
    assert validate_tree(db_copy) == [Problem(".", "current_malformed b'junk'")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert validate_tree(empty) == []


def test_tree_walk_uses_no_symlinked_current(tmp_path: Path) -> None:
    # A symlinked CURRENT does not make a LevelDB folder (nothing here is followed).
    folder = tmp_path / "x"
    folder.mkdir()
    (tmp_path / "CURRENT.real").write_bytes(b"MANIFEST-000001\n")
    os.symlink(tmp_path / "CURRENT.real", folder / "CURRENT")
    assert validate_tree(folder) == []
