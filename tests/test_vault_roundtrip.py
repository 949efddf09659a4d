"""Snapshot and restore against a real PostgreSQL, with profile-shaped trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

import app.vault.save as save_mod
import app.vault.statcache as statcache
from app.settings import Settings
from app.snapshot.keep import KeepRules
from app.store.db import open_pool
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from tests.support.profile_tree import BLOBS, ProfileTree, tree_files

pytestmark = pytest.mark.anyio


def kept_files(root: Path) -> dict[str, bytes]:
    """What a snapshot of root should hold: the kept files, byte for byte."""
    rules = KeepRules()
    return {rel: data for rel, data in tree_files(root).items() if rules.keeps(rel)}


async def test_round_trip_two_generations(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    first = await save_snapshot(pool, "s1", profile.root, options)
    expected_1 = kept_files(profile.root)
    assert first.changed and first.generation == 1
    assert first.chunks_new == first.chunks_reused + first.chunks_new  # nothing to reuse yet
    assert first.bytes_uploaded > 0

    profile.add_messages(20, size=512)
    profile.set_cookie("session", "changed")
    profile.add_blob("ff", 10_000)
    second = await save_snapshot(pool, "s1", profile.root, options)
    expected_2 = kept_files(profile.root)
    assert second.changed and second.generation == 2
    # Only what changed travels: a small fraction of the first upload.
    assert second.chunks_reused > 0
    assert second.chunks_new < first.chunks_new / 4
    assert second.bytes_uploaded < first.bytes_uploaded / 4

    for generation, expected in ((1, expected_1), (2, expected_2)):
        target = tmp_path / f"restored-{generation}"
        result = await restore_profile(pool, "s1", target, generation=generation)
        assert result.generation == generation
        assert tree_files(target) == expected
    assert expected_1 != expected_2


async def test_restore_defaults_to_newest_and_replaces_existing_dir(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    await save_snapshot(pool, "s1", profile.root, options)
    profile.add_blob("new", 5000)
    await save_snapshot(pool, "s1", profile.root, options)
    target = tmp_path / "target"
    target.mkdir()
    (target / "stale-file").write_text("from an older life")
    crashed = tmp_path / ".target.restore-deadbeef"  # left by a restore that was killed
    crashed.mkdir()
    (crashed / "half").write_text("x")
    result = await restore_profile(pool, "s1", target)
    assert result.generation == 2
    assert not (target / "stale-file").exists()
    assert (target / BLOBS / "1" / "00" / "new").exists()
    assert tree_files(target) == kept_files(profile.root)
    # No restore leftovers beside the target, not even those of an earlier crash.
    assert sorted(p.name for p in tmp_path.iterdir() if ".restore-" in p.name) == []


async def test_unchanged_profile_writes_nothing(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions
) -> None:
    await save_snapshot(pool, "s1", profile.root, options)
    query = ("SELECT (SELECT count(*) FROM chunks) c, (SELECT count(*) FROM snapshots) s, "
             "(SELECT updated_at FROM sessions) u")
    async with pool.acquire() as conn:
        counts = await conn.fetchrow(query)
    again = await save_snapshot(pool, "s1", profile.root, options)
    assert not again.changed
    assert again.generation == 1
    assert again.bytes_uploaded == 0 and again.chunks_new == 0
    async with pool.acquire() as conn:
        after_counts = await conn.fetchrow(query)
    assert dict(after_counts) == dict(counts)


async def test_unchanged_files_are_not_reread(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Files written "just now" are racily clean and would be re-read: age the tree.
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    await save_snapshot(pool, "s1", profile.root, options)
    read: list[str] = []
    original = save_mod._Uploader.add_file

    async def spy(self: save_mod._Uploader, path: Path,
                  rel: str) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
        read.append(path.name)
        return await original(self, path, rel)

    monkeypatch.setattr(save_mod._Uploader, "add_file", spy)
    blob = profile.add_blob("fresh", 3000)
    result = await save_snapshot(pool, "s1", profile.root, options)
    assert result.changed
    # The new blob is read; hard-linked tables and blobs that did not change are not.
    assert blob.name in read
    assert not any(name.endswith(".ldb") for name in read)
    assert "1" not in read and "2" not in read


async def test_singleton_files_never_stored_or_restored(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    profile.add_running_browser_files()
    await save_snapshot(pool, "s1", profile.root, options)
    target = tmp_path / "restored"
    await restore_profile(pool, "s1", target)
    names = {p.name for p in target.rglob("*")}
    assert not any(n.startswith("Singleton") for n in names)
    assert "LOCK" not in names and "LOG" not in names
    assert "Cache" not in names and "Crashpad" not in names and "History" not in names


async def test_empty_directories_and_modes_come_back(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    empty = profile.root / "Default/IndexedDB/https_other_0.indexeddb.blob"
    empty.mkdir()
    pref = profile.root / "Default/Preferences"
    pref.chmod(0o640)
    await save_snapshot(pool, "s1", profile.root, options)
    target = tmp_path / "restored"
    await restore_profile(pool, "s1", target)
    assert (target / "Default/IndexedDB/https_other_0.indexeddb.blob").is_dir()
    # Owner-only whatever the live mode was (issue 13: a profile is a logged-in device).
    assert (target / "Default/Preferences").stat().st_mode & 0o777 == 0o600
    assert (target / "Default/Preferences").stat().st_mtime_ns == pref.stat().st_mtime_ns


async def test_missing_profile_dir_is_a_clear_error(
    pool: asyncpg.Pool, options: VaultOptions, tmp_path: Path
) -> None:
    from app.errors import CaptureInvalid

    with pytest.raises(CaptureInvalid, match="does not exist"):
        await save_snapshot(pool, "s1", tmp_path / "nope", options)


async def test_snapshot_of_restored_profile_is_unchanged(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    await save_snapshot(pool, "s1", profile.root, options)
    target = tmp_path / "elsewhere" / "profile"
    await restore_profile(pool, "s1", target)
    shutil.rmtree(profile.root)
    again = await save_snapshot(pool, "s1", target, options)
    assert not again.changed and again.bytes_uploaded == 0


async def test_stat_cache_is_not_trusted_against_another_database(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wiped or swapped database: the local cache must not make us skip any upload."""
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    await save_snapshot(pool, "s1", profile.root, options)
    other = Settings(database_url=empty_database_url, data_dir=tmp_path / "st2")  # type: ignore[arg-type]
    async with open_pool(other) as pool2:
        result = await save_snapshot(pool2, "s1", profile.root, options)
        assert result.changed and result.generation == 1 and result.chunks_reused == 0
        await restore_profile(pool2, "s1", tmp_path / "from-second")
    assert tree_files(tmp_path / "from-second") == kept_files(profile.root)


async def test_unchanged_profile_is_told_by_stat_without_staging(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    await save_snapshot(pool, "s1", profile.root, options)
    staged: list[Path] = []
    original = save_mod.capture

    def spy(profile_dir: Path, *args: object, **kwargs: object) -> object:
        staged.append(profile_dir)
        return original(profile_dir, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(save_mod, "capture", spy)
    same = await save_snapshot(pool, "s1", profile.root, options)
    assert not same.changed and same.capture_attempts == 0 and staged == []
    assert same.generation == 1 and same.chunks_reused > 0 and same.bytes_raw > 0


@pytest.mark.parametrize("change", ["content", "touch", "mode", "new_dir", "removed"])
async def test_any_change_the_stat_check_cannot_vouch_for_is_captured(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions,
    monkeypatch: pytest.MonkeyPatch, change: str,
) -> None:
    """Whatever differs from the stat cache goes through a real capture and comparison."""
    monkeypatch.setattr(statcache, "RACY_NS", 0)
    await save_snapshot(pool, "s1", profile.root, options)
    cookies = profile.root / "Default" / "Cookies"
    if change == "content":
        profile.set_cookie("session", "other")
    elif change == "touch":
        data = cookies.read_bytes()
        cookies.write_bytes(data)  # same bytes, new mtime
    elif change == "mode":
        cookies.chmod(0o740)  # the owner's exec bit: what an owner-only mode keeps
    elif change == "new_dir":
        (profile.root / "Default" / "Local Storage" / "extra").mkdir()
    else:
        cookies.unlink()
    result = await save_snapshot(pool, "s1", profile.root, options)
    assert result.capture_attempts >= 1
    assert result.changed is (change != "touch")
    target = profile.root.parent / "restored"
    await restore_profile(pool, "s1", target)
    assert tree_files(target) == kept_files(profile.root)


async def test_a_big_upload_leaves_the_planner_informed(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a big upload the chunk table is analyzed: lookups by digest do not run on the
    planner's guess for a never-analyzed table until autovacuum comes by."""
    query = "SELECT reltuples FROM pg_class WHERE relname = 'chunks'"
    async with pool.acquire() as conn:
        assert await conn.fetchval(query) <= 0  # never analyzed: -1
    monkeypatch.setattr(save_mod, "_ANALYZE_AFTER_CHUNKS", 10)
    first = await save_snapshot(pool, "s1", profile.root, options)
    assert first.chunks_new >= 10
    async with pool.acquire() as conn:
        assert await conn.fetchval(query) >= first.chunks_new
