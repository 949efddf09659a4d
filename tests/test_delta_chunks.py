"""Delta chunks (issue 15 item 2): a changed chunk stored against its old version, a new
table's chunk list against the old table's; whatever reads chunks reads them, garbage
collection keeps their bases, and a base is always a chunk stored whole."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from app.errors import CorruptSnapshot
from app.settings import Settings
from app.snapshot.codec import CODEC_DELTA
from app.snapshot.sealing import VaultKey, generate_key
from app.vault import delta_bases
from app.vault.archive import export_generation, import_generation
from app.vault.options import VaultOptions
from app.vault.rekey import rekey_store
from app.vault.restore import restore_profile
from app.vault.retention import prune
from app.vault.save import save_snapshot
from tests.support.profile_tree import ProfileTree, tree_files
from tests.test_encryption import kept, keyed, store

pytestmark = pytest.mark.anyio


def change(profile: ProfileTree, step: int) -> None:
    """What a chat does between two snapshots: records into IndexedDB, a cookie rewritten,
    and a settings file of 90 KB rewritten with a few values changed (a new version of
    several of its chunks)."""
    profile.add_messages(10, size=500)
    profile.set_cookie("session", f"value-{step}" * 40)
    lines = [f'"setting_{i}": {{"value": {i * (step if i % 97 == 0 else 1)}, '
             f'"note": "{i % 13} of the settings a browser keeps"}},' for i in range(1500)]
    (profile.root / "Default" / "Preferences").write_text("{\n" + "\n".join(lines) + "\n}")


async def deltas(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT digest, codec, base FROM chunks WHERE base IS NOT NULL")


async def test_changed_chunks_are_stored_against_their_old_versions(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Session "s" with bases, session "w" (the same trees) without: what deltas save."""
    change(profile, 0)
    for session in ("s", "w"):
        await save_snapshot(pool, session, profile.root, options)
    change(profile, 1)
    second = await save_snapshot(pool, "s", profile.root, options)
    rows = await deltas(pool)
    assert rows and all(r["codec"] == CODEC_DELTA for r in rows)
    await restore_profile(pool, "s", tmp_path / "restored")
    assert tree_files(tmp_path / "restored") == kept(profile.root)

    monkeypatch.setattr(delta_bases.DeltaBases, "candidate", lambda *_args: None)
    monkeypatch.setattr(delta_bases.DeltaBases, "list_candidates", lambda *_args: {})
    whole = await save_snapshot(pool, "w", profile.root, options)
    assert whole.chunks_new == second.chunks_new
    assert whole.bytes_uploaded > second.bytes_uploaded * 1.2


async def test_a_base_is_kept_while_a_delta_needs_it_and_is_always_stored_whole(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions,
        tmp_path: Path) -> None:
    """Generation 1 goes (keep 1); chunks only it named stay while a delta of the newest
    generation is stored against them. A delta of a delta is stored against the first
    one's base: no chains."""
    change(profile, 0)
    await save_snapshot(pool, "s", profile.root, options)
    for step in range(1, 4):
        change(profile, step)
        await save_snapshot(pool, "s", profile.root, options)
    result = await prune(pool, "s", keep=1)
    assert sorted(result.deleted_generations) == [1, 2, 3]
    async with pool.acquire() as conn:
        chained = await conn.fetchval(
            "SELECT count(*) FROM chunks c JOIN chunks b ON b.session_id = c.session_id "
            "AND b.digest = c.base WHERE b.base IS NOT NULL")
        missing = await conn.fetchval(
            "SELECT count(*) FROM chunks c WHERE c.base IS NOT NULL AND NOT EXISTS "
            "(SELECT FROM chunks b WHERE b.session_id = c.session_id AND b.digest = c.base)")
    assert await deltas(pool)
    assert chained == 0 and missing == 0
    await restore_profile(pool, "s", tmp_path / "restored")
    assert tree_files(tmp_path / "restored") == kept(profile.root)


@pytest.mark.parametrize("damage", ["base gone", "base is a delta"])
async def test_a_delta_whose_base_is_wrong_is_a_corrupt_generation(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path,
        damage: str) -> None:
    change(profile, 0)
    await save_snapshot(pool, "s", profile.root, options)
    change(profile, 1)
    await save_snapshot(pool, "s", profile.root, options)
    rows = await deltas(pool)
    assert len(rows) >= 2
    async with pool.acquire() as conn:
        # Generation 2's delta names a base that is gone, or another delta (a chain).
        other = b"\x07" * 32 if damage == "base gone" else rows[1]["digest"]
        await conn.execute("UPDATE chunks SET base = $1 WHERE digest = $2",
                           other, rows[0]["digest"])
    with pytest.raises(CorruptSnapshot):
        await restore_profile(pool, "s", tmp_path / "restored", generation=2)
    restored = await restore_profile(pool, "s", tmp_path / "fallback")
    assert restored.generation == 1


async def test_deltas_sealed_exported_imported_and_rekeyed(
        settings: Settings, profile: ProfileTree, options: VaultOptions,
        tmp_path: Path) -> None:
    """A keyed store seals deltas like any chunk; an export holds them whole, so an import
    elsewhere stands alone; rekey turns a plaintext store's deltas into sealed rows."""
    change(profile, 0)
    async with store(settings) as pool:
        await save_snapshot(pool, "s", profile.root, options)
        change(profile, 1)
        await save_snapshot(pool, "s", profile.root, options)
        assert await deltas(pool)
        export = await export_generation(pool, "s", tmp_path / "s.tar")
        assert export["generation"] == 2
        await import_generation(pool, "copy", tmp_path / "s.tar")
        async with pool.acquire() as conn:
            assert not await conn.fetchval("SELECT count(*) FROM chunks WHERE "
                                           "session_id = 'copy' AND base IS NOT NULL")
        await restore_profile(pool, "copy", tmp_path / "imported")
    assert tree_files(tmp_path / "imported") == kept(profile.root)
    key = generate_key()
    async with store(keyed(settings, key)) as pool:
        await rekey_store(pool, VaultKey.parse(key, "key"))
        await restore_profile(pool, "s", tmp_path / "rekeyed")
        change(profile, 2)
        await save_snapshot(pool, "s", profile.root, options)
        async with pool.acquire() as conn:
            codecs = {r["codec"] for r in await conn.fetch(
                "SELECT codec FROM chunks WHERE session_id = 's' AND base IS NOT NULL")}
        assert codecs and all(c.startswith(f"{CODEC_DELTA}+aes256gcm-") for c in codecs)
        await restore_profile(pool, "s", tmp_path / "sealed")
    assert tree_files(tmp_path / "rekeyed") == tree_files(tmp_path / "imported")
    assert tree_files(tmp_path / "sealed") == kept(profile.root)
