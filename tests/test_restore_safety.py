"""Restore never writes outside its target, and damaged generations fall back safely."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import anyio
import asyncpg
import pytest
import structlog
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import CorruptSnapshot, NotFound
from app.progress import NullProgress
from app.snapshot.codec import FIXED_CHUNK_SIZE
from app.snapshot.manifest import Manifest
from app.snapshot.safepath import is_singleton
from app.vault.manifests import open_manifest
from app.vault.options import VaultOptions
from app.vault.restore import RESTORABLE, materialize, restore_profile
from app.vault.save import save_snapshot
from tests.support.profile_tree import IDB, ProfileTree, tree_files

_part = st.sampled_from(["..", ".", "", "a", "b", "Singleton", "SingletonLock", "/", "..."])
_path = st.lists(_part, min_size=1, max_size=4).map("/".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(_path, min_size=1, max_size=5), dirs=st.lists(_path, max_size=3))
def test_hostile_manifest_never_escapes(files: list[str], dirs: list[str]) -> None:
    doc = {"version": 1, "chunk_size": FIXED_CHUNK_SIZE, "dirs": [[d, 0o755] for d in dirs],
           "files": [[f, 0o644, 0, 0, ""] for f in files]}
    packed = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
    try:
        manifest = Manifest.from_bytes(packed)
    except CorruptSnapshot:
        return
    with tempfile.TemporaryDirectory() as tmp:
        outer = Path(tmp)
        target = outer / "inner" / "target"
        target.parent.mkdir()
        anyio.run(materialize, None, "s", manifest, target, NullProgress())
        created = [Path(dp) / n for dp, ds, fs in os.walk(outer) for n in ds + fs]
        assert all(p.is_relative_to(target) or p == target or p == target.parent
                   for p in created)
        assert not any(p.is_symlink() for p in created)
        assert not any(p.name.startswith("Singleton") and p.is_file() for p in created)
        # What the manifest holds is there (an empty restore would pass the checks above).
        for entry in manifest.files:
            assert (target / entry.path).is_file() != is_singleton(entry.path), entry.path
        # A folder comes back when a restored file lies in it or the rules keep it; a folder
        # named like a lock file (`Singleton`) is never restored on its own.
        parents = {"/".join(f.path.split("/")[:i]) for f in manifest.files
                   if not is_singleton(f.path) for i in range(1, f.path.count("/") + 1)}
        for folder in manifest.dirs:
            if folder.path in parents or RESTORABLE.keeps(folder.path):
                assert (target / folder.path).is_dir(), folder.path




async def _corrupt_chunk_of(pool: asyncpg.Pool, session: str, generation: int) -> None:
    """Damage one chunk that only `generation` uses."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT generation, manifest FROM snapshots WHERE session_id=$1",
                                session)
        digests = {r["generation"]: (await open_manifest(conn, session, r["manifest"])).referenced()
                   for r in rows}
        others = set().union(*(d for g, d in digests.items() if g != generation))
        only = next(iter(digests[generation] - others))
        await conn.execute(
            "UPDATE chunks SET data = overlay(data placing '\\xdeadbeef'::bytea from 5) "
            "WHERE session_id=$1 AND digest=$2", session, only)


@pytest.mark.anyio
async def test_corrupt_newest_generation_falls_back(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    await save_snapshot(pool, "s1", profile.root, options)
    await restore_profile(pool, "s1", tmp_path / "one")
    good = tree_files(tmp_path / "one")
    assert "Local State" in good and any(k.startswith(IDB) for k in good)
    profile.add_blob("only-in-two", 70_000)
    await save_snapshot(pool, "s1", profile.root, options)
    await _corrupt_chunk_of(pool, "s1", 2)

    with structlog.testing.capture_logs() as logs:
        result = await restore_profile(pool, "s1", tmp_path / "restored")
    assert result.generation == 1
    assert [s["generation"] for s in result.skipped] == [2]
    events = [e for e in logs if e["event"] == "restore_generation_corrupt"]
    assert events and events[0]["generation"] == 2 and "chunk" in events[0]["reason"]
    restored = tree_files(tmp_path / "restored")
    assert restored == good  # all of generation 1 (an empty restore fails here)
    assert not any(".restore-" in p.name for p in tmp_path.iterdir())

    # Named explicitly, the damaged generation is an error, and the target is untouched.
    with pytest.raises(CorruptSnapshot, match="generation 2"):
        await restore_profile(pool, "s1", tmp_path / "restored", generation=2)
    assert tree_files(tmp_path / "restored") == restored


@pytest.mark.anyio
async def test_tampered_manifest_is_detected(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    await save_snapshot(pool, "s1", profile.root, options)
    profile.add_blob("x", 100)
    await save_snapshot(pool, "s1", profile.root, options)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE snapshots SET manifest = manifest || '\\x00'::bytea "
                           "WHERE session_id='s1' AND generation=2")
    result = await restore_profile(pool, "s1", tmp_path / "r")
    assert result.generation == 1 and "checksum" in result.skipped[0]["reason"]


@pytest.mark.anyio
async def test_nothing_restorable(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    with pytest.raises(NotFound):
        await restore_profile(pool, "nobody", tmp_path / "r")
    await save_snapshot(pool, "s1", profile.root, options)
    await _corrupt_chunk_of(pool, "s1", 1)
    existing = tmp_path / "r"
    existing.mkdir()
    (existing / "keep-me").write_text("x")
    with pytest.raises(CorruptSnapshot, match="no generation"):
        await restore_profile(pool, "s1", existing)
    assert (existing / "keep-me").read_text() == "x"
    with pytest.raises(NotFound):
        await restore_profile(pool, "s1", existing, generation=9)




@pytest.mark.anyio
async def test_a_chunk_swapped_for_other_valid_data_is_detected(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    """Bytes that decode cleanly to the right size but are not the chunk (a row restored from
    another backup, a swapped page): only the digest tells, and restore falls back."""
    await save_snapshot(pool, "s1", profile.root, options)
    profile.add_blob("only-in-two", 70_000)
    await save_snapshot(pool, "s1", profile.root, options)
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT generation, manifest FROM snapshots WHERE session_id=$1",
                                "s1")
        refs = {r["generation"]: (await open_manifest(conn, "s1", r["manifest"])).referenced()
                for r in rows}
        only = next(iter(refs[2] - refs[1]))
        size = await conn.fetchval("SELECT size FROM chunks WHERE session_id=$1 AND digest=$2",
                                   "s1", only)
        # Same size, valid stored form (raw codec), other content.
        await conn.execute("UPDATE chunks SET codec = 'raw', data = $3, stored_size = $4 "
                           "WHERE session_id=$1 AND digest=$2", "s1", only, b"\0" * size, size)
    result = await restore_profile(pool, "s1", tmp_path / "restored")
    assert result.generation == 1 and [s["generation"] for s in result.skipped] == [2]
