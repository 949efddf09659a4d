"""Directory trees shaped like a logged-in Chromium user-data-dir, for tests and benchmarks.

Real formats where it matters: IndexedDB, Local Storage and the service worker Database are real
LevelDB databases (written with plyvel), Cookies and History are real SQLite files, blobs sit in
an IndexedDB `.blob` folder. Around them lie the things a snapshot must drop: caches, crash
reports, LevelDB LOCK/LOG files and the Singleton* lock files of a running browser.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import plyvel

ORIGIN = "https_web.example.com_0"
IDB = f"Default/IndexedDB/{ORIGIN}.indexeddb.leveldb"
BLOBS = f"Default/IndexedDB/{ORIGIN}.indexeddb.blob"
LOCAL_STORAGE = "Default/Local Storage/leveldb"
SW_DB = "Default/Service Worker/Database"
SW_SCRIPTS = "Default/Service Worker/ScriptCache"

KEPT_MARKERS = (IDB, BLOBS, LOCAL_STORAGE, "Default/Cookies", "Default/Preferences",
                "Local State", SW_DB, SW_SCRIPTS)
DROPPED_MARKERS = ("Default/Cache", "Default/Code Cache", "GrShaderCache", "Crashpad",
                   "SingletonLock", "SingletonCookie", "Default/History", "BrowserMetrics",
                   "Default/Sessions", "Default/Service Worker/CacheStorage")


def payload(rng: random.Random, size: int) -> bytes:
    """Half random, half repetitive: compresses about 2:1 like real IndexedDB values."""
    half = size // 2
    text = (b'{"type":"chat","body":"hello there, see you at eight"}' * (size // 50 + 1))
    return rng.randbytes(half) + text[: size - half]


@dataclass
class ProfileTree:
    """A generated profile and the handles to change it like a live site would."""

    root: Path
    seed: int = 1
    message_no: int = 0

    def idb(self, write_buffer: int = 4 * 1024 * 1024) -> plyvel.DB:
        """Open the IndexedDB LevelDB (close it when done)."""
        (self.root / IDB).mkdir(parents=True, exist_ok=True)
        return plyvel.DB(str(self.root / IDB), create_if_missing=True,
                         write_buffer_size=write_buffer)

    def add_messages(self, count: int, size: int = 1024) -> None:
        """Append chat-like records to IndexedDB, as a live chat does."""
        rng = random.Random(self.seed * 7919 + self.message_no)
        db = self.idb()
        try:
            with db.write_batch() as wb:
                for _ in range(count):
                    self.message_no += 1
                    wb.put(b"msg-%09d" % self.message_no, payload(rng, size))
        finally:
            db.close()

    def add_blob(self, name: str, size: int) -> Path:
        """A stored file, as IndexedDB keeps Blobs: one file per blob under .blob/."""
        # A string seed, not hash(): str hashes change with PYTHONHASHSEED, and test data
        # must be the same on every run.
        rng = random.Random(f"{self.seed}/{name}")
        path = self.root / BLOBS / "1" / "00" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload(rng, size))
        return path

    def set_cookie(self, name: str, value: str) -> None:
        """Write a cookie row into the real SQLite cookie store."""
        con = sqlite3.connect(self.root / "Default/Cookies")
        try:
            con.execute("CREATE TABLE IF NOT EXISTS cookies (name TEXT PRIMARY KEY, value TEXT)")
            con.execute("INSERT OR REPLACE INTO cookies VALUES (?, ?)", (name, value))
            con.commit()
        finally:
            con.close()

    def add_running_browser_files(self) -> None:
        """What a running Chromium leaves: Singleton* and LevelDB LOCK files."""
        lock = self.root / "SingletonLock"
        if not lock.is_symlink():
            lock.symlink_to("otherhost-12345")
        (self.root / "SingletonCookie").write_text("123")
        (self.root / IDB / "LOCK").write_bytes(b"")


def build_profile(root: Path, idb_bytes: int = 2 * 1024 * 1024, blob_count: int = 4,
                  blob_size: int = 200 * 1024, seed: int = 1) -> ProfileTree:
    """Create a profile-shaped tree with about idb_bytes of IndexedDB records."""
    rng = random.Random(seed)
    tree = ProfileTree(root, seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "Local State").write_text(json.dumps({"profile": {"info_cache": {"Default": {}}}}))
    (root / "Default").mkdir(exist_ok=True)
    (root / "Default/Preferences").write_text(json.dumps({"profile": {"name": "Person 1"}}))
    record = 4096
    db = tree.idb()
    try:
        for start in range(0, idb_bytes, 256 * record):
            with db.write_batch() as wb:
                for i in range(start // record, min(idb_bytes, start + 256 * record) // record):
                    wb.put(b"rec-%09d" % i, payload(rng, record))
        # Settle the records into table files, as a long-lived Chromium profile has them.
        db.compact_range(start=b"", stop=b"\xff")
    finally:
        db.close()
    for i in range(blob_count):
        tree.add_blob(f"{i + 1:x}", blob_size)
    for folder in (LOCAL_STORAGE, SW_DB):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ls = plyvel.DB(str(root / LOCAL_STORAGE), create_if_missing=True)
    ls.put(b"_https://web.example.com\x00\x01auth", b"token-" + rng.randbytes(32).hex().encode())
    ls.close()
    sw = plyvel.DB(str(root / SW_DB), create_if_missing=True)
    sw.put(b"REG:https://web.example.com/", b"registration")
    sw.close()
    (root / SW_SCRIPTS).mkdir(parents=True)
    (root / SW_SCRIPTS / "index").write_bytes(rng.randbytes(64))
    (root / SW_SCRIPTS / "4f2a_0").write_bytes(b"self.addEventListener('fetch', () => {});")
    tree.set_cookie("session", "abc123")
    # Things a snapshot must leave behind.
    for cache in ("Default/Cache/Cache_Data", "Default/Code Cache/js", "GrShaderCache",
                  "Default/Service Worker/CacheStorage/abc", "Crashpad/reports",
                  "Default/Sessions"):
        (root / cache).mkdir(parents=True, exist_ok=True)
        (root / cache / "data_1").write_bytes(rng.randbytes(64 * 1024))
    hist = sqlite3.connect(root / "Default/History")
    hist.execute("CREATE TABLE urls (url TEXT)")
    hist.commit()
    hist.close()
    (root / "BrowserMetrics").mkdir()
    (root / "BrowserMetrics/metrics.pma").write_bytes(b"\0" * 4096)
    tree.add_running_browser_files()
    return tree


def tree_files(root: Path) -> dict[str, bytes]:
    """Every regular file under root with its content (for byte-for-byte comparisons)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out
