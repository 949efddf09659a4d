"""Export a generation to one file and import it back."""

from __future__ import annotations

import tarfile
from pathlib import Path

import asyncpg
import pytest

from app.errors import CorruptSnapshot, NotFound, UserError
from app.store import repo
from app.vault.archive import export_generation, import_generation
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from tests.support.profile_tree import ProfileTree, tree_files

pytestmark = pytest.mark.anyio


async def test_export_import_round_trip(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    await save_snapshot(pool, "src", profile.root, options)
    await restore_profile(pool, "src", tmp_path / "expected")
    profile.add_blob("later", 20_000)
    await save_snapshot(pool, "src", profile.root, options)

    file = tmp_path / "one.skx"
    out = await export_generation(pool, "src", file, generation=1)
    assert out["generation"] == 1 and file.is_file()
    imported = await import_generation(pool, "dst", file)
    assert imported["changed"] and imported["generation"] == 1
    assert imported["source_session"] == "src" and imported["source_generation"] == 1
    await restore_profile(pool, "dst", tmp_path / "got")
    assert tree_files(tmp_path / "got") == tree_files(tmp_path / "expected")
    again = await import_generation(pool, "dst", file)
    assert not again["changed"] and again["chunks_new"] == 0
    async with pool.acquire() as conn:
        gens = await repo.list_generations(conn, "dst")
    assert [(g.generation, g.kind) for g in gens] == [(1, "import")]


async def test_damaged_exports_change_nothing(
    pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path
) -> None:
    await save_snapshot(pool, "src", profile.root, options)
    file = tmp_path / "one.skx"
    await export_generation(pool, "src", file)
    data = file.read_bytes()

    truncated = tmp_path / "truncated.skx"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.skx"
    # Damage a chunk's bytes (past the header and manifest members).
    pos = len(data) // 2
    flipped.write_bytes(data[:pos] + bytes(b ^ 0xFF for b in data[pos : pos + 64])
                        + data[pos + 64 :])
    not_tar = tmp_path / "junk.skx"
    not_tar.write_bytes(b"hello" * 1000)
    wrong_tar = tmp_path / "other.tar"
    with tarfile.open(wrong_tar, "w") as tar:
        tar.add(profile.root / "Local State", arcname="Local State")
    # A damaged member header reads as the end of the archive in stream mode, and so does a
    # file cut where a member starts: what follows is simply not there. Importing into the
    # session that holds every chunk, only the header's object count tells.
    with tarfile.open(file) as tar:
        middle = tar.getmembers()[len(tar.getmembers()) // 2]
    header_flipped = tmp_path / "header-flipped.skx"
    header_flipped.write_bytes(data[: middle.offset]
                               + bytes(b ^ 0xFF for b in data[middle.offset : middle.offset + 64])
                               + data[middle.offset + 64 :])
    cut_at_member = tmp_path / "cut-at-member.skx"
    cut_at_member.write_bytes(data[: middle.offset])

    for bad in (truncated, flipped, header_flipped, cut_at_member, not_tar, wrong_tar):
        for session in ("src", "fresh"):
            with pytest.raises(CorruptSnapshot):
                await import_generation(pool, session, bad)
    with pytest.raises(CorruptSnapshot, match=r"truncated export: \d+ of \d+ objects"):
        await import_generation(pool, "src", cut_at_member)
    with pytest.raises(UserError):
        await import_generation(pool, "src", tmp_path / "missing.skx")
    async with pool.acquire() as conn:
        assert [g.generation for g in await repo.list_generations(conn, "src")] == [1]
        assert await repo.list_generations(conn, "fresh") == []


async def test_export_errors(pool: asyncpg.Pool, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        await export_generation(pool, "nobody", tmp_path / "x.skx")
    assert not (tmp_path / "x.skx").exists()
