"""The login key: localStorage read from a copy of a profile, and what a capture is labelled.

The databases are real LevelDB (plyvel) with the keys Chromium writes; the end-to-end tests
(test_exec, test_import_sources) read ones Chromium itself wrote.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import plyvel
import pytest

from app.errors import ConfigError
from app.snapshot.local_storage import LoginKey, origin_of, read_item
from app.vault.options import VaultOptions
from app.vault.save import QR_OVER_LOGIN, save_snapshot
from tests.support.profile_tree import LOCAL_STORAGE, ProfileTree, tree_files

ORIGIN = "https://web.whatsapp.com"
KEY = LoginKey(ORIGIN, "last-wid-md")


def put_item(root: Path, origin: str, key: str, value: str, *, wide: bool = False) -> None:
    """localStorage[key] = value on origin, encoded as Chromium does (8-bit or UTF-16)."""
    (root / LOCAL_STORAGE).mkdir(parents=True, exist_ok=True)
    db = plyvel.DB(str(root / LOCAL_STORAGE), create_if_missing=True)
    try:
        name = b"\x00" + key.encode("utf-16-le") if wide else b"\x01" + key.encode("latin-1")
        data = b"\x00" + value.encode("utf-16-le") if wide else b"\x01" + value.encode("latin-1")
        db.put(b"_" + origin.encode() + b"\x00" + name, data)
    finally:
        db.close()


def delete_item(root: Path, origin: str, key: str) -> None:
    db = plyvel.DB(str(root / LOCAL_STORAGE))
    try:
        db.delete(b"_" + origin.encode() + b"\x00\x01" + key.encode("latin-1"))
    finally:
        db.close()


def test_origin_of_is_what_chromium_writes() -> None:
    assert origin_of("https://Web.WhatsApp.com/") == "https://web.whatsapp.com"
    assert origin_of("https://web.whatsapp.com:443/x?y") == "https://web.whatsapp.com"
    assert origin_of("http://127.0.0.1:8765/") == "http://127.0.0.1:8765"
    assert origin_of("http://[::1]:80/") == "http://[::1]"
    with pytest.raises(ConfigError):
        origin_of("about:blank")


def test_read_item_finds_the_key_on_its_origin_only(tmp_path: Path) -> None:
    root = tmp_path / "profile"
    assert read_item(root, ORIGIN, "last-wid-md") is None  # no profile at all
    put_item(root, "https://evil.example", "last-wid-md", "nope")
    put_item(root, ORIGIN, "ünïcode ☃", "wide value ☃", wide=True)
    assert KEY.state_of(root) == "qr"
    put_item(root, ORIGIN, "last-wid-md", '"4915550000:1@s.whatsapp.net"')
    assert read_item(root, ORIGIN, "last-wid-md") == '"4915550000:1@s.whatsapp.net"'
    assert read_item(root, ORIGIN, "ünïcode ☃") == "wide value ☃"
    assert KEY.state_of(root) == "ready"
    delete_item(root, ORIGIN, "last-wid-md")  # a logout clears it: a tombstone, not absence
    assert KEY.state_of(root) == "qr"


def test_peek_reads_a_staged_copy_and_leaves_the_live_folder_alone(tmp_path: Path) -> None:
    root = tmp_path / "profile"
    put_item(root, ORIGIN, "last-wid-md", "me")
    before = tree_files(root)
    work = tmp_path / "work"
    assert KEY.peek(root, work) == "ready"
    assert tree_files(root) == before  # opening the copy rewrote the copy, not the profile
    assert not [p for p in work.iterdir() if p.name.startswith("staging-")]  # cleaned up
    assert LoginKey(ORIGIN, "other").peek(root, work) == "qr"


@pytest.mark.anyio
async def test_a_qr_capture_never_replaces_a_logged_in_generation(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions) -> None:
    put_item(profile.root, ORIGIN, "last-wid-md", "me")
    first = await save_snapshot(pool, "s", profile.root, options, kind="login",
                                login_state=KEY.state_of, keep_login=True)
    assert first.changed and first.login_state == "ready"
    delete_item(profile.root, ORIGIN, "last-wid-md")
    profile.add_messages(20)
    skipped = await save_snapshot(pool, "s", profile.root, options, login_state=KEY.state_of,
                                  keep_login=True)
    assert not skipped.changed and skipped.skipped == QR_OVER_LOGIN
    assert skipped.login_state == "qr" and skipped.generation is None
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT generation, login_state FROM snapshots "
                                "WHERE session_id = 's' ORDER BY generation")
    assert [tuple(r) for r in rows] == [(first.generation, "ready")]
    # Without the guard (a manual snapshot, an import) the capture commits, labelled qr.
    kept = await save_snapshot(pool, "s", profile.root, options, login_state=KEY.state_of)
    assert kept.changed and kept.login_state == "qr"
