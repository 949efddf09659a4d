"""Encryption at rest (issue 13 item 1): what a dump, an export or a moved row gives away."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.errors import ConfigError, CorruptSnapshot
from app.settings import Settings
from app.snapshot.keep import KeepRules
from app.snapshot.safepath import is_singleton
from app.snapshot.sealing import VaultKey, generate_key
from app.store.db import open_pool
from app.vault.archive import export_generation, import_generation
from app.vault.options import VaultOptions
from app.vault.rekey import rekey_store
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from tests.support.daemon import Daemon, login
from tests.support.profile_tree import ProfileTree, build_profile, tree_files
from tests.support.vault_db import connect, sql

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
MARKER = b"PLAINTEXT-MARKER-" + uuid.uuid4().hex.encode()


def plant_marker(profile: ProfileTree) -> None:
    """A file that zstd stores verbatim (random bytes around it), with the marker in its
    content and its name."""
    folder = profile.root / "Default" / "Local Storage" / "leveldb"
    folder.mkdir(parents=True, exist_ok=True)
    name = "000777.log"
    (folder / name).write_bytes(os.urandom(30_000) + MARKER + os.urandom(30_000))
    (folder / f"{MARKER.decode()}.ldb").write_bytes(os.urandom(5000))


def kept(root: Path) -> dict[str, bytes]:
    """The files of a profile a snapshot keeps (what a restore brings back)."""
    rules = KeepRules()
    return {p: data for p, data in tree_files(root).items()
            if rules.keeps(p) and not is_singleton(p)}


def dump(url: str) -> bytes:
    return subprocess.run(["pg_dump", "--no-owner", url], capture_output=True, check=True,
                          timeout=120).stdout


def leaks(data: bytes) -> bool:
    """The marker in a dump or a file: verbatim, or as bytea hex (how COPY writes it)."""
    return MARKER in data or MARKER.hex().encode() in data.lower()


def keyed(settings: Settings, key: str | None, old: str | None = None) -> Settings:
    return settings.model_copy(update={
        "encryption_key": None if key is None else _secret(key),
        "encryption_key_old": None if old is None else _secret(old)})


def _secret(value: str) -> object:
    from pydantic import SecretStr

    return SecretStr(value)


@asynccontextmanager
async def store(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(settings, migrate=False) as pool:
        yield pool


@asynccontextmanager
async def sealed_export(settings: Settings, profile: ProfileTree, options: VaultOptions,
                        file: Path) -> AsyncIterator[tuple[str, asyncpg.Pool, dict[str, Any]]]:
    """A store under a new key holding one snapshot of profile as session "s", exported to
    file: (the key, the store's pool, what the export said)."""
    key = generate_key()
    async with store(keyed(settings, key)) as pool:
        await save_snapshot(pool, "s", profile.root, options)
        yield key, pool, await export_generation(pool, "s", file)


@pytest.fixture
def marked(profile: ProfileTree) -> ProfileTree:
    plant_marker(profile)
    return profile


@pytest.mark.parametrize("with_key", [False, True], ids=["plaintext", "keyed"])
async def test_a_dump_of_a_keyed_store_holds_no_plaintext(
    settings: Settings, database_url: str, marked: ProfileTree, options: VaultOptions,
    with_key: bool,
) -> None:
    async with store(keyed(settings, generate_key() if with_key else None)) as pool:
        await save_snapshot(pool, "s", marked.root, options)
    # Without a key the marker is there to find: the check can fail.
    assert leaks(dump(database_url)) != with_key


@pytest.fixture
def other_database(pg_server_url: str) -> Iterator[str]:
    name = f"sk_x_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(pg_server_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def assert_one_line(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


async def test_a_dump_restored_elsewhere_restores_nothing_without_the_key(
    settings: Settings, database_url: str, other_database: str, marked: ProfileTree,
    options: VaultOptions, cli_env: dict[str, str], tmp_path: Path,
) -> None:
    key = generate_key()
    async with store(keyed(settings, key)) as pool:
        await save_snapshot(pool, "s", marked.root, options)
    await asyncio.to_thread(
        subprocess.run, ["psql", "-q", "-v", "ON_ERROR_STOP=1", other_database],
        input=dump(database_url), capture_output=True, check=True, timeout=120)
    env = {**cli_env, "DATABASE_URL": other_database}
    target = tmp_path / "stolen"
    no_key = cli(env, "restore", "s", "--profile", str(target))
    assert_one_line(no_key, 2, "encrypted")
    wrong = cli({**env, "SESSIONKEEPER_ENCRYPTION_KEY": generate_key()}, "restore", "s",
                "--profile", str(target))
    assert_one_line(wrong, 2, "is not a key of this store")
    assert not target.exists()
    # Nothing was written either: the copy still holds its one key and one generation.
    conn = await connect(other_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM vault_keys") == 1
        assert await conn.fetchval("SELECT count(*) FROM snapshots") == 1
    finally:
        await conn.close()
    right = cli({**env, "SESSIONKEEPER_ENCRYPTION_KEY": key}, "restore", "s", "--profile",
                str(target))
    assert right.returncode == 0, right.stderr
    assert tree_files(target) == kept(marked.root)


async def test_sealed_rows_cannot_be_swapped_or_moved(
    settings: Settings, marked: ProfileTree, options: VaultOptions, tmp_path: Path,
) -> None:
    async with store(keyed(settings, generate_key())) as pool:
        await save_snapshot(pool, "s", marked.root, options)
        await save_snapshot(pool, "t", marked.root, options)
        async with pool.acquire() as conn:
            # Equal content, other session: other addresses (no equality across sessions).
            s = {bytes(r["digest"]) for r in await conn.fetch(
                "SELECT digest FROM chunks WHERE session_id = 's'")}
            t = {bytes(r["digest"]) for r in await conn.fetch(
                "SELECT digest FROM chunks WHERE session_id = 't'")}
            assert s and not s & t
            a, b = await conn.fetch("SELECT digest, data FROM chunks WHERE session_id = 's' "
                                    "ORDER BY digest LIMIT 2")
            await conn.execute("UPDATE chunks SET data = $2 WHERE session_id = 's' AND "
                               "digest = $1", a["digest"], b["data"])
            # t's manifest put in place of s's: bound to its session, it does not open.
            await conn.execute("UPDATE snapshots SET manifest = (SELECT manifest FROM snapshots "
                               "WHERE session_id = 't'), manifest_sha256 = (SELECT "
                               "manifest_sha256 FROM snapshots WHERE session_id = 't') "
                               "WHERE session_id = 's'")
        with pytest.raises(CorruptSnapshot, match="could be restored"):
            await restore_profile(pool, "s", tmp_path / "s")
        async with pool.acquire() as conn:
            await conn.execute("UPDATE snapshots SET manifest = (SELECT manifest FROM snapshots "
                               "WHERE session_id = 't'), manifest_sha256 = (SELECT "
                               "manifest_sha256 FROM snapshots WHERE session_id = 't') "
                               "WHERE session_id = 's'")
        with pytest.raises(CorruptSnapshot, match="authentication failed"):
            await restore_profile(pool, "s", tmp_path / "s2", generation=1)


async def test_a_key_on_a_plaintext_store_then_rekey_seals_everything(
    settings: Settings, database_url: str, marked: ProfileTree, options: VaultOptions,
    tmp_path: Path,
) -> None:
    async with store(settings) as pool:
        await save_snapshot(pool, "s", marked.root, options)
        await restore_profile(pool, "s", tmp_path / "gen1")
    key = generate_key()
    marked.add_blob("later", 50_000)
    async with store(keyed(settings, key)) as pool:
        second = await save_snapshot(pool, "s", marked.root, options)
        assert second.generation == 2
        # Both readable: the plaintext generation stays until rekey.
        await restore_profile(pool, "s", tmp_path / "a", generation=1)
        assert tree_files(tmp_path / "a") == tree_files(tmp_path / "gen1")
    assert leaks(dump(database_url))
    async with store(keyed(settings, key)) as pool:
        result = await rekey_store(pool, VaultKey.parse(key, "key"))
        assert result.generations_converted == 1 and result.left_plaintext_generations == 0
        await restore_profile(pool, "s", tmp_path / "b", generation=1)
        await restore_profile(pool, "s", tmp_path / "c", generation=2)
    assert tree_files(tmp_path / "b") == tree_files(tmp_path / "gen1")
    assert tree_files(tmp_path / "c") == kept(marked.root)
    assert not leaks(dump(database_url))


async def test_rotation_keeps_every_address(
    settings: Settings, marked: ProfileTree, options: VaultOptions, tmp_path: Path,
) -> None:
    old, new = generate_key(), generate_key()
    async with store(keyed(settings, old)) as pool:
        await save_snapshot(pool, "s", marked.root, options)
        async with pool.acquire() as conn:
            before = {bytes(r["digest"]) for r in await conn.fetch("SELECT digest FROM chunks")}
    async with store(keyed(settings, new, old)) as pool:
        result = await rekey_store(pool, VaultKey.parse(new, "k"), VaultKey.parse(old, "k"))
        assert result.chunks_resealed == len(before) and result.left_sealed_with_other_keys == 0
        assert result.keys_retired == [VaultKey.parse(old, "k").id]
        async with pool.acquire() as conn:
            after = {bytes(r["digest"]) for r in await conn.fetch("SELECT digest FROM chunks")}
            codecs = {r["codec"] for r in await conn.fetch("SELECT DISTINCT codec FROM chunks")}
        assert after == before
        assert all(c.endswith(VaultKey.parse(new, "k").codec_suffix) for c in codecs)
    with pytest.raises(ConfigError, match="is not a key of this store"):
        async with store(keyed(settings, old)):
            pass
    async with store(keyed(settings, new)) as pool:
        # A fresh capture (no stat cache) of the same tree uploads nothing: same addresses.
        again = await save_snapshot(pool, "s", marked.root, options,
                                    work_dir=tmp_path / "fresh-work")
        assert not again.changed and again.chunks_new == 0
        await restore_profile(pool, "s", tmp_path / "back")
    assert tree_files(tmp_path / "back") == kept(marked.root)


async def test_exports_are_sealed(
    settings: Settings, marked: ProfileTree, options: VaultOptions, tmp_path: Path,
) -> None:
    file = tmp_path / "out.skx"
    async with sealed_export(settings, marked, options, file) as (_, pool, out):
        assert out["sealed"]
        assert not leaks(file.read_bytes())
        await import_generation(pool, "copy", file)
        await restore_profile(pool, "copy", tmp_path / "copy")
    assert tree_files(tmp_path / "copy") == kept(marked.root)


async def test_an_export_needs_its_key_to_import(
    settings: Settings, other_database: str, marked: ProfileTree, options: VaultOptions,
    tmp_path: Path,
) -> None:
    file = tmp_path / "out.skx"
    async with sealed_export(settings, marked, options, file) as (key, _, _):
        pass
    elsewhere = settings.model_copy(update={"database_url": _secret(other_database)})
    its_own = generate_key()
    async with open_pool(keyed(elsewhere, its_own)) as pool:
        with pytest.raises(ConfigError, match="this export is sealed with key id"):
            await import_generation(pool, "s", file)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
    async with open_pool(keyed(elsewhere, its_own, key)) as pool:
        # With the export's key as the old key, a store with its own key imports it.
        await import_generation(pool, "s", file)
        await restore_profile(pool, "s", tmp_path / "back")
    assert tree_files(tmp_path / "back") == kept(marked.root)


def test_keygen_and_bad_keys(cli_env: dict[str, str]) -> None:
    out = cli(cli_env, "keygen")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert len(VaultKey.parse(key, "k").id) == 16
    assert cli(cli_env, "keygen").stdout.strip() != key
    bad = "bm90IGEga2V5"  # base64 of 9 bytes
    proc = cli({**cli_env, "SESSIONKEEPER_ENCRYPTION_KEY": bad}, "sessions")
    assert_one_line(proc, 2, "SESSIONKEEPER_ENCRYPTION_KEY holds 9 bytes")
    assert bad not in proc.stderr
    proc = cli({**cli_env, "SESSIONKEEPER_ENCRYPTION_KEY": "not base64!"}, "sessions")
    assert_one_line(proc, 2, "is not base64")


def _count_sealed(url: str, suffix: str) -> tuple[int, int]:
    async def go() -> tuple[int, int]:
        conn = await connect(url)
        try:
            row = await conn.fetchrow("SELECT count(*) FILTER (WHERE codec LIKE $1) AS done, "
                                      "count(*) AS total FROM chunks", f"%{suffix}")
            assert row is not None
            return int(row["done"]), int(row["total"])
        finally:
            await conn.close()

    return asyncio.run(go())


async def test_rekey_killed_halfway_resumes_while_snapshots_go_on(
    settings: Settings, database_url: str, cli_env: dict[str, str], options: VaultOptions,
    tmp_path: Path,
) -> None:
    old, new = generate_key(), generate_key()
    new_suffix = VaultKey.parse(new, "k").codec_suffix
    # A store big enough that the re-seal takes a while: 3 sessions of ~24 MB.
    profiles = {}
    async with store(keyed(settings, old)) as pool:
        for n in range(3):
            tree = build_profile(tmp_path / f"p{n}", idb_bytes=24 * 1024 * 1024, seed=n + 1)
            await save_snapshot(pool, f"s{n}", tree.root, options)
            profiles[f"s{n}"] = tree
    env = {**cli_env, "SESSIONKEEPER_ENCRYPTION_KEY": new,
           "SESSIONKEEPER_ENCRYPTION_KEY_OLD": old}
    proc = subprocess.Popen([sys.executable, "-m", "app", "rekey"], env=env, cwd=ROOT,  # noqa: ASYNC220 (killed below)
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, total = await asyncio.to_thread(_count_sealed, database_url, new_suffix)
            if done > 0:
                break
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done, total = await asyncio.to_thread(_count_sealed, database_url, new_suffix)
    assert 0 < done < total, (done, total)  # killed halfway
    # Meanwhile the sessions keep snapshotting with the new key (the old one still read).
    async with store(keyed(settings, new, old)) as pool:
        for sid, tree in profiles.items():
            tree.add_blob(f"during-{sid}", 40_000)
            result = await save_snapshot(pool, sid, tree.root, options)
            assert result.changed
    again = cli(env, "rekey", "--json")
    assert again.returncode == 0, again.stderr
    done, total = await asyncio.to_thread(_count_sealed, database_url, new_suffix)
    assert done == total
    async with store(keyed(settings, new)) as pool:
        for sid, tree in profiles.items():
            await restore_profile(pool, sid, tmp_path / f"back-{sid}")
            assert tree_files(tmp_path / f"back-{sid}") == kept(tree.root)
            await restore_profile(pool, sid, tmp_path / f"first-{sid}", generation=1)


def test_a_keyed_daemon_seals_what_it_keeps_and_comes_back_logged_in(
    start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
) -> None:
    key = generate_key()
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    first = start(SESSIONKEEPER_ENCRYPTION_KEY=key)
    login(first, demo_port)
    first.signal(signal.SIGTERM)
    assert first.wait_exit(30) == 0
    assert "encryption_disabled" not in first.names()
    assert key not in first.log_text()
    suffix = VaultKey.parse(key, "k").codec_suffix
    assert sql(database_url, "SELECT count(*) FROM chunks WHERE codec NOT LIKE $1",
               f"%{suffix}") == 0
    assert sql(database_url, "SELECT count(*) FROM snapshots WHERE "
               "substring(manifest FROM 1 FOR 4) <> 'SKM3'::bytea") == 0
    assert sql(database_url, "SELECT count(*) FROM snapshots") >= 1

    shutil.rmtree(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    second = start(SESSIONKEEPER_ENCRYPTION_KEY=key)
    second.wait_for("session_restored", 60)
    second.wait_for("ready", 60)
    assert "qr_required" not in second.names()
    second.signal(signal.SIGTERM)
    assert second.wait_exit(30) == 0


async def test_a_version_2_store_is_still_read_and_keyed_by_rekey(
    settings: Settings, marked: ProfileTree, options: VaultOptions, tmp_path: Path,
) -> None:
    """A generation written before format 3 (no `addressing`: SHA-256 addresses) restores as
    before, under a key too, and rekey converts it."""
    import hashlib
    import json

    import zstandard

    async with store(settings) as pool:
        await save_snapshot(pool, "s", marked.root, options)
        async with pool.acquire() as conn:
            stored = bytes(await conn.fetchval("SELECT manifest FROM snapshots"))
            doc = json.loads(zstandard.ZstdDecompressor().decompress(stored))
            assert doc["version"] == 3 and doc["addressing"] == "sha256"
            doc["version"] = 2
            del doc["addressing"]
            old = zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
            await conn.execute("UPDATE snapshots SET manifest = $1, manifest_sha256 = $2, "
                               "format_version = 2", old, hashlib.sha256(old).digest())
        await restore_profile(pool, "s", tmp_path / "plain")
    assert tree_files(tmp_path / "plain") == kept(marked.root)
    key = generate_key()
    async with store(keyed(settings, key)) as pool:
        await restore_profile(pool, "s", tmp_path / "keyed")
        result = await rekey_store(pool, VaultKey.parse(key, "k"))
        assert result.generations_converted == 1
        await restore_profile(pool, "s", tmp_path / "converted")
    assert tree_files(tmp_path / "keyed") == tree_files(tmp_path / "converted") == kept(marked.root)


def test_sealing_refuses_what_it_cannot_open() -> None:
    """The checks below the vault: each refusal is a CorruptSnapshot or a one-line key error."""
    from app.snapshot.sealing import (
        KeyUnavailable,
        SessionCodec,
        split_codec,
    )
    from app.vault.keyring import make_keyset

    key = VaultKey.parse(generate_key(), "k")
    assert split_codec("zstd") == ("zstd", None)
    assert split_codec(f"zstd{key.codec_suffix}") == ("zstd", key.id)
    assert split_codec("zstd+rot13-00") == ("zstd+rot13-00", "")
    with pytest.raises(ConfigError, match="32 bytes"):
        VaultKey(b"short")
    with pytest.raises(CorruptSnapshot, match="too short"):
        key.open(b"tiny", b"", "chunk")
    codec = SessionCodec("s", "hmac-sha256", b"k" * 32, make_keyset(key))
    raw = os.urandom(5000)
    address = codec.address(raw)
    name, stored = codec.encode(raw, address)
    assert codec.decode(name, stored, len(raw), address) == raw
    with pytest.raises(CorruptSnapshot, match="authentication failed"):
        codec.decode(name, stored, len(raw) + 1, address)  # another size: another binding
    with pytest.raises(CorruptSnapshot, match="unknown codec"):
        codec.decode("lz4", stored, len(raw), address)
    other = SessionCodec("s", "hmac-sha256", b"k" * 32,
                         make_keyset(VaultKey.parse(generate_key(), "k")))
    with pytest.raises(KeyUnavailable, match=f"sealed with key id {key.id}"):
        other.decode(name, stored, len(raw), address)
    with pytest.raises(KeyUnavailable, match="cannot be read without"):
        SessionCodec("s", "hmac-sha256", None, make_keyset(None))
    manifest = codec.seal_manifest(b"plain manifest")
    assert SessionCodec.open_manifest("s", manifest, codec.keys) == b"plain manifest"
    with pytest.raises(CorruptSnapshot, match="authentication failed"):
        SessionCodec.open_manifest("t", manifest, codec.keys)


def test_rekey_command_line(cli_env: dict[str, str], settings: Settings, marked: ProfileTree,
                            options: VaultOptions, tmp_path: Path) -> None:
    assert_one_line(cli(cli_env, "rekey"), 2, "rekey needs the new key")
    key = generate_key()
    assert_one_line(cli(cli_env, "rekey", "--new-key", key, "--old-key", key), 2,
                    "the old and the new key are the same key")
    assert_one_line(cli(cli_env, "rekey", "--new-key", "bm90IGEga2V5"), 2,
                    "--new-key holds 9 bytes")
    asyncio.run(_snapshot(settings, marked, options))
    out = cli(cli_env, "rekey", "--new-key", key, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["generations_converted"] == 1 and result["left_plaintext_generations"] == 0
    assert result["key_id"] == VaultKey.parse(key, "k").id
    again = json.loads(cli(cli_env, "rekey", "--new-key", key, "--json").stdout)
    assert again["generations_converted"] == again["chunks_resealed"] == 0
    keyed_env = {**cli_env, "SESSIONKEEPER_ENCRYPTION_KEY": key}
    restored = cli(keyed_env, "restore", "s", "--profile", str(tmp_path / "back"))
    assert restored.returncode == 0, restored.stderr
    assert tree_files(tmp_path / "back") == kept(marked.root)


async def _snapshot(settings: Settings, profile: ProfileTree, options: VaultOptions) -> None:
    async with store(settings) as pool:
        await save_snapshot(pool, "s", profile.root, options)


async def test_damaged_sealed_exports_change_nothing(
    settings: Settings, marked: ProfileTree, options: VaultOptions, tmp_path: Path,
) -> None:
    file = tmp_path / "out.skx"
    async with sealed_export(settings, marked, options, file) as (_, pool, _):
        members = _members(file)
        # A flipped byte in a sealed member: its tag fails; nothing committed.
        name = next(n for n in members if n.startswith("chunks/"))
        flipped = bytearray(members[name])
        flipped[len(flipped) // 2] ^= 1
        bad = tmp_path / "flipped.skx"
        _write(bad, {**members, name: bytes(flipped)})
        with pytest.raises(CorruptSnapshot, match=r"authentication failed.*nothing committed"):
            await import_generation(pool, "copy", bad)
        # A header that does not say how the file is sealed.
        header = json.loads(members["sessionkeeper-export.json"])
        header.pop("sealed")
        bad = tmp_path / "unsealed-header.skx"
        _write(bad, {**members, "sessionkeeper-export.json": json.dumps(header).encode()})
        with pytest.raises(CorruptSnapshot, match="does not say how it is sealed"):
            await import_generation(pool, "copy", bad)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = 'copy'") == 0


def _members(file: Path) -> dict[str, bytes]:
    import tarfile

    with tarfile.open(file) as tar:
        out = {}
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            assert fh is not None
            out[member.name] = fh.read()
        return out


def _write(file: Path, members: dict[str, bytes]) -> None:
    import io
    import tarfile

    with tarfile.open(file, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_rekey_with_a_running_daemon(
    start: Callable[..., Daemon], daemon_env: dict[str, str], database_url: str,
    cli_env: dict[str, str], tmp_path: Path,
) -> None:
    """The daemon keeps its session (reads the old key's rows, snapshots with the new key)
    while rekey runs, is killed and resumes; then the new key alone brings it back logged in."""
    old, new = generate_key(), generate_key()
    new_suffix = VaultKey.parse(new, "k").codec_suffix
    demo_port = int(daemon_env["SESSIONKEEPER_DEMO_PORT"])
    first = start(SESSIONKEEPER_ENCRYPTION_KEY=old)
    login(first, demo_port)
    first.signal(signal.SIGTERM)
    assert first.wait_exit(30) == 0
    # Bulk under the old key beside the daemon's session, so that the re-seal takes a while.
    settings = Settings(database_url=database_url, data_dir=tmp_path / "bulk-state")  # type: ignore[arg-type]

    async def bulk() -> None:
        async with store(keyed(settings, old)) as pool:
            for n in range(2):
                tree = build_profile(tmp_path / f"bulk{n}", idb_bytes=24 * 1024 * 1024,
                                     seed=n + 7)
                await save_snapshot(pool, f"bulk{n}", tree.root, VaultOptions())

    asyncio.run(bulk())
    second = start(SESSIONKEEPER_ENCRYPTION_KEY=new, SESSIONKEEPER_ENCRYPTION_KEY_OLD=old)
    second.wait_for("ready", 60)
    assert "qr_required" not in second.names()
    env = {**cli_env, "SESSIONKEEPER_ENCRYPTION_KEY": new,
           "SESSIONKEEPER_ENCRYPTION_KEY_OLD": old}
    proc = subprocess.Popen([sys.executable, "-m", "app", "rekey"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _count_sealed(database_url, new_suffix)[0] == 0:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done, total = _count_sealed(database_url, new_suffix)
    assert 0 < done < total, (done, total)
    # The daemon's final snapshot lands in the half re-sealed store.
    second.signal(signal.SIGTERM)
    assert second.wait_exit(30) == 0
    final = second.wait_for("shutdown_completed")
    again = cli(env, "rekey", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["left_sealed_with_other_keys"] == 0
    assert _count_sealed(database_url, new_suffix)[0] == _count_sealed(database_url,
                                                                      new_suffix)[1]
    shutil.rmtree(daemon_env["SESSIONKEEPER_PROFILE_DIR"])
    third = start(SESSIONKEEPER_ENCRYPTION_KEY=new)
    restored = third.wait_for("session_restored", 60)
    assert restored["generation"] >= (final.get("generation") or 0)
    third.wait_for("ready", 60)
    assert "qr_required" not in third.names()
    third.signal(signal.SIGTERM)
    assert third.wait_exit(30) == 0
