"""Hostile inputs (issue 13 items 2 and 3): session ids that are paths, and decompression bombs.

Real PostgreSQL throughout. Memory peaks are measured in a child process (VmHWM), where the
test's own allocations do not count.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import asyncpg
import pytest
import structlog
import zstandard

from app.claims import Claimer
from app.cli import build_parser
from app.errors import ConfigError, CorruptSnapshot
from app.metrics import Metrics
from app.session import SessionRunner
from app.session_ids import is_session_id
from app.settings import Settings, load_settings
from app.snapshot.keep import KeepRules
from app.store import leases
from app.store.migrate import load_migrations, migrate
from app.vault.archive import export_generation, import_generation
from app.vault.options import VaultOptions
from app.vault.restore import restore_profile
from app.vault.save import save_snapshot
from tests.support.profile_tree import ProfileTree

ROOT = Path(__file__).resolve().parent.parent
HOSTILE_IDS = ["../../x", "/x", "..", ".", "a/b", "a\n", "a\x00b", "-rf", "", "x" * 129,
               "a b", "é", ".hidden", "a\\b"]


def test_session_id_pattern() -> None:
    assert all(is_session_id(s) for s in ["a", "A.b_c-1", "x" * 128, "9"])
    assert not any(is_session_id(s) for s in HOSTILE_IDS)
    assert not is_session_id(None)


@pytest.mark.parametrize("bad", ["../../x", "/x", "a\n", "..", "a\nb"])
def test_settings_refuse_hostile_ids(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """(A comma-separated list trims whitespace around each id: "good,a\n" is "good,a".)"""
    monkeypatch.setenv("SESSIONKEEPER_SESSION_ID", bad)
    with pytest.raises(ConfigError):
        load_settings()
    monkeypatch.delenv("SESSIONKEEPER_SESSION_ID")
    monkeypatch.setenv("SESSIONKEEPER_SESSION_IDS", f"good,{bad}x")
    with pytest.raises(ConfigError):
        load_settings()


CLI_FORMS = [["sessions", "add", "{}"], ["sessions", "remove", "{}"], ["snapshots", "{}"],
             ["snapshot", "{}"], ["restore", "{}"], ["export", "{}", "f"],
             ["import", "{}", "f"], ["prune", "{}", "--keep", "1"], ["delete", "{}"],
             ["exec", "--session", "{}", "--", "true"]]


@pytest.mark.parametrize("form", CLI_FORMS, ids=lambda f: f[0] + "-" + f[1])
def test_cli_refuses_hostile_ids(form: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    good = [a.replace("{}", "ok-1") for a in form]
    parser.parse_args(good)  # the form itself is valid
    for bad in ["../../x", "/x", "a\n", ".."]:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([a.replace("{}", bad) for a in form])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "invalid session id" in err and err.count("\n") == 1, err


@pytest.mark.anyio
async def test_sessions_table_refuses_hostile_ids(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for bad in ["../../x", "/x", "a\n"]:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("INSERT INTO sessions (id) VALUES ($1)", bad)


def _rewrite_export(src: Path, dst: Path, header_update: dict[str, object]) -> None:
    with tarfile.open(src, "r") as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for member in tin.getmembers():
            fh = tin.extractfile(member)
            assert fh is not None
            data = fh.read()
            if member.name == "sessionkeeper-export.json":
                data = json.dumps({**json.loads(data), **header_update}).encode()
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


@pytest.mark.anyio
async def test_import_header_with_hostile_id_refused(
        pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions, tmp_path: Path) -> None:
    await save_snapshot(pool, "s1", profile.root, options)
    good = tmp_path / "good.skx"
    await export_generation(pool, "s1", good)
    bad = tmp_path / "bad.skx"
    _rewrite_export(good, bad, {"session_id": "../../x"})
    with pytest.raises(CorruptSnapshot, match="session id"):
        await import_generation(pool, "copy", bad)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = 'copy'") == 0


@pytest.mark.anyio
async def test_claim_mode_skips_hostile_ids(settings: Settings, pool: asyncpg.Pool,
                                            tmp_path: Path) -> None:
    """The claim loop's own check: with the CHECK constraint dropped by hand, rows named like
    paths are claimed by the SQL but never turned into a profile path (nor block the rest)."""
    async with pool.acquire() as conn:
        await conn.execute("ALTER TABLE sessions DROP CONSTRAINT IF EXISTS sessions_id_is_a_name")
        await conn.execute("INSERT INTO sessions (id, registered) VALUES "
                           "('../../x', true), ('/x', true), ('ok', true)")
    made: list[Settings] = []
    first = anyio.Event()

    def make_runner(s: Settings, target: str | None) -> SessionRunner | None:
        made.append(s)
        first.set()
        return None

    claimer = Claimer(settings.model_copy(update={"max_sessions": 1,
                                                   "profile_dir": tmp_path / "profiles"}),
                      make_runner, [], Metrics(), None)
    claimer.POLL = 0.05
    with structlog.testing.capture_logs() as logs:
        async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
            tg.start_soon(claimer.run, stack, tg)
            with anyio.move_on_after(10):
                await first.wait()
            tg.cancel_scope.cancel()
    assert [s.session_id for s in made] == ["ok"], logs
    assert made[0].profile_dir == tmp_path / "profiles" / "ok"
    skipped = [e for e in logs if e["event"] == "claim_skipped"
               and "not a valid session id" in e["reason"]]
    assert {e["claimed_session"] for e in skipped} == {repr("../../x"), repr("/x")}
    assert not (tmp_path / "x").exists() and not Path("/x").exists()


@pytest.mark.anyio
async def test_migration_with_hostile_id_rows(empty_database_url: str, tmp_path: Path) -> None:
    """A store holding an id from before the rule still migrates: the row keeps its data but
    leaves claim mode; new hostile ids are refused; the others are claimed as before."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for m in load_migrations():
        if m.version < 9:
            (folder / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn, folder)
        await conn.execute("INSERT INTO sessions (id, registered) VALUES "
                           "('../../x', true), ('ok', true)")
        assert 9 in await migrate(conn)
        rows = dict(await conn.fetch("SELECT id, registered FROM sessions"))
        assert rows == {"../../x": False, "ok": True}
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO sessions (id) VALUES ('/y')")
        claims = await leases.claim(conn, "me", 30, 5)
        assert [c.session_id for c in claims] == ["ok"]
        # Without such a row the constraint is validated.
        await conn.execute("DELETE FROM sessions WHERE id = '../../x'")
        await conn.execute("ALTER TABLE sessions VALIDATE CONSTRAINT sessions_id_is_a_name")
    finally:
        await conn.close()


# --- item 2: bombs ------------------------------------------------------------------------

# Imports a file in a fresh interpreter and prints the outcome and the peak resident memory
# (VmHWM): what the import cost, without the test process's own allocations.
_CHILD = r"""
import asyncio, json, sys
from pathlib import Path
import asyncpg
from app.errors import UserError
from app.vault.archive import import_generation

async def main() -> dict:
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
    try:
        out = await import_generation(pool, sys.argv[3], Path(sys.argv[2]))
        return {"ok": True, "generation": out["generation"]}
    except UserError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        await pool.close()

result = asyncio.run(main())
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
result["peak_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(result))
"""
PEAK_LIMIT_MB = 150


def _import_in_child(database_url: str, file: Path, session: str = "bombed") -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, database_url, str(file), session],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("child import:", out)  # shown with -s: the peak of each case
    return out


def _members(file: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(file, "r") as tar:
        out = []
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            assert fh is not None
            out.append((member, fh.read()))
        return out


def _write_export(file: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(file, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _header(manifest: bytes, objects: int) -> bytes:
    return json.dumps({"format": "sessionkeeper-export", "version": 1, "session_id": "s1",
                       "generation": 1, "created_at": "2026-01-01T00:00:00+00:00",
                       "kind": "manual", "login_state": "ready",
                       "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
                       "objects": objects}).encode()


def _zero_frame(size: int) -> bytes:
    """A zstd frame of `size` zero bytes that declares its size: a few KB for hundreds of MB,
    made a MiB at a time."""
    obj = zstandard.ZstdCompressor(level=1).compressobj(size=size)
    parts, block = [], bytes(1024 * 1024)
    for _ in range(size // len(block)):
        parts.append(obj.compress(block))
    parts.append(obj.flush())
    return b"".join(parts)


@pytest.fixture
async def good_export(pool: asyncpg.Pool, profile: ProfileTree, options: VaultOptions,
                      tmp_path: Path) -> Path:
    await save_snapshot(pool, "s1", profile.root, options)
    file = tmp_path / "good.skx"
    await export_generation(pool, "s1", file)
    return file


async def _nothing_stored(pool: asyncpg.Pool, session: str) -> None:
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE id = $1", session) == 0
        assert await conn.fetchval("SELECT count(*) FROM chunks WHERE session_id = $1",
                                   session) == 0


@pytest.mark.anyio
async def test_chunk_frame_declaring_a_huge_size(pool: asyncpg.Pool, database_url: str,
                                                 good_export: Path, tmp_path: Path) -> None:
    """A chunk member of a few KB whose zstd frame declares 512 MiB: python-zstandard would
    allocate and fill all of it (max_output_size is ignored when a frame declares its size)."""
    members = _members(good_export)
    # The biggest chunk: 512 MiB of zeros take 16 KB of zstd, more than a small chunk's size.
    index = max((i for i, (m, _) in enumerate(members) if m.name.startswith("chunks/")),
                key=lambda i: len(members[i][1]))
    digest = members[index][0].name.split("/")[1].split(".")[0]
    bomb = _zero_frame(512 * 1024 * 1024)
    assert len(bomb) < 64 * 1024
    named = [(m.name, d) for m, d in members]
    named[index] = (f"chunks/{digest}.zstd", bomb)
    file = tmp_path / "bomb.skx"
    _write_export(file, named)
    out = _import_in_child(database_url, file)
    assert out["ok"] is False and "declares" in str(out["error"]), out
    assert "\n" not in str(out["error"])
    assert float(str(out["peak_mb"])) < PEAK_LIMIT_MB, out
    await _nothing_stored(pool, "bombed")


@pytest.mark.anyio
@pytest.mark.parametrize("shape", ["brackets", "declared"])
async def test_manifest_bomb(pool: asyncpg.Pool, database_url: str, tmp_path: Path,
                             shape: str) -> None:
    """A manifest of a few KB holding 32 MiB of JSON values (`[],` a million times over), or a
    frame declaring 1 GiB: refused before json.loads or the decompressor allocates it."""
    if shape == "brackets":
        body = b"[]," * (32 * 1024 * 1024 // 3)
        raw = (b'{"version":2,"chunking":"fastcdc-2k-8k-64k","dirs":[],"files":['
               + body + b'[]]}')
        manifest = zstandard.ZstdCompressor(level=3).compress(raw)
    else:
        manifest = _zero_frame(1024 * 1024 * 1024)
    assert len(manifest) < 1024 * 1024
    file = tmp_path / "bomb.skx"
    _write_export(file, [("sessionkeeper-export.json", _header(manifest, 0)),
                         ("manifest.zst", manifest)])
    out = _import_in_child(database_url, file)
    assert out["ok"] is False and "manifest" in str(out["error"]), out
    assert float(str(out["peak_mb"])) < PEAK_LIMIT_MB, out
    await _nothing_stored(pool, "bombed")


@pytest.mark.anyio
async def test_sparse_member_bomb(pool: asyncpg.Pool, database_url: str, good_export: Path,
                                  tmp_path: Path) -> None:
    """GNU tar sparse members: a 60 MiB chunk member that takes no room in the file. Read a
    batch at a time, 256 of them would be 15 GB in memory."""
    members = _members(good_export)
    tree = tmp_path / "tree"
    (tree / "chunks").mkdir(parents=True)
    names = []
    for member, data in members[:2]:
        (tree / member.name).write_bytes(data)
        names.append(member.name)
    chunk_names = [m.name for m, _ in members[2:]]
    for name in chunk_names[:8]:
        path = tree / name.replace(".zstd", ".raw")
        with path.open("wb") as fh:
            fh.truncate(60 * 1024 * 1024)
        names.append(str(path.relative_to(tree)))
    file = tmp_path / "sparse.skx"
    await anyio.run_process(["tar", "--sparse", "--format=gnu", "-cf", str(file), "-C",
                             str(tree), *names])
    assert file.stat().st_size < 10 * 1024 * 1024
    out = _import_in_child(database_url, file)
    assert out["ok"] is False and "refused" in str(out["error"]), out
    assert float(str(out["peak_mb"])) < PEAK_LIMIT_MB, out
    await _nothing_stored(pool, "bombed")


@pytest.mark.anyio
async def test_good_import_peak(database_url: str, good_export: Path) -> None:
    """The same child importing a sound export: the baseline the bombs are measured against."""
    out = _import_in_child(database_url, good_export, "copy")
    assert out["ok"] is True, out
    assert float(str(out["peak_mb"])) < PEAK_LIMIT_MB, out


@pytest.mark.anyio
async def test_failed_import_leaves_nothing(pool: asyncpg.Pool, good_export: Path,
                                            tmp_path: Path) -> None:
    """An export damaged in its last chunk fails after the other chunks went in: no chunk and
    no session row of the import stay behind."""
    members = [(m.name, d) for m, d in _members(good_export)]
    name, data = members[-1]
    members[-1] = (name, data[:-1] + bytes([data[-1] ^ 0xFF]))
    file = tmp_path / "damaged.skx"
    _write_export(file, members)
    with pytest.raises(CorruptSnapshot, match="nothing committed"):
        await import_generation(pool, "fresh", file)
    await _nothing_stored(pool, "fresh")


@pytest.mark.anyio
async def test_restore_writes_only_kept_paths(pool: asyncpg.Pool, profile: ProfileTree,
                                              tmp_path: Path) -> None:
    """A generation holding a file outside the keep rules (an extension, here captured with
    an extra include glob) comes back without it under the default rules."""
    evil = profile.root / "Default/Extensions/evil/1.0/manifest.json"
    evil.parent.mkdir(parents=True)
    evil.write_text("{}")
    wide = VaultOptions(rules=KeepRules.create(include=["Default/Extensions/**"]))
    await save_snapshot(pool, "s1", profile.root, wide)
    with structlog.testing.capture_logs() as logs:
        await restore_profile(pool, "s1", tmp_path / "narrow", rules=KeepRules())
    assert not (tmp_path / "narrow/Default/Extensions").exists()
    assert (tmp_path / "narrow/Default/Preferences").exists()
    skipped = [e for e in logs if e["event"] == "restore_paths_skipped"]
    assert skipped and "Default/Extensions/evil/1.0/manifest.json" in skipped[0]["paths"]
    await restore_profile(pool, "s1", tmp_path / "wide", rules=wide.rules)
    assert (tmp_path / "wide/Default/Extensions/evil/1.0/manifest.json").exists()


_RESTORE_CHILD = r"""
import asyncio, json, sys
from pathlib import Path
import asyncpg
from app.errors import UserError
from app.vault.restore import restore_profile

async def main() -> dict:
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
    try:
        out = await restore_profile(pool, sys.argv[2], Path(sys.argv[3]))
        return {"ok": True, "generation": out.generation}
    except UserError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        await pool.close()

result = asyncio.run(main())
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
result["peak_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(result))
"""


def _restore_in_child(database_url: str, session: str, target: Path) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", _RESTORE_CHILD, database_url, session,
                           str(target)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("child restore:", out)
    return out


@pytest.mark.anyio
async def test_planted_rows_in_the_daemons_restore(
        pool: asyncpg.Pool, database_url: str, profile: ProfileTree, options: VaultOptions,
        tmp_path: Path) -> None:
    """The daemon's restore reads the same rows: a manifest row that is a bomb makes it fall
    back to the previous generation, a chunk row that is one fails the generation; memory
    stays bounded either way (no crash loop)."""
    await save_snapshot(pool, "s1", profile.root, options)
    profile.add_blob("more", 50_000)
    await save_snapshot(pool, "s1", profile.root, options)
    bomb = _zero_frame(1024 * 1024 * 1024)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE snapshots SET manifest = $1, manifest_sha256 = $2 "
                           "WHERE session_id = 's1' AND generation = 2",
                           bomb, hashlib.sha256(bomb).digest())
    out = _restore_in_child(database_url, "s1", tmp_path / "p1")
    assert out == {"ok": True, "generation": 1, "peak_mb": out["peak_mb"]}
    assert float(str(out["peak_mb"])) < PEAK_LIMIT_MB

    await save_snapshot(pool, "s2", profile.root, options)
    chunk = _zero_frame(512 * 1024 * 1024)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE chunks SET codec = 'zstd', data = $1 WHERE session_id = 's2' AND digest = "
            "(SELECT digest FROM chunks WHERE session_id = 's2' AND size >= $2 LIMIT 1)",
            chunk, len(chunk))
    out = _restore_in_child(database_url, "s2", tmp_path / "p2")
    assert out["ok"] is False and "could be restored" in str(out["error"]), out
    assert float(str(out["peak_mb"])) < PEAK_LIMIT_MB
    assert not (tmp_path / "p2").exists()


# `sessionkeeper import` itself in a fresh interpreter, with its peak memory on the last line.
_CLI_CHILD = r"""
import runpy, sys
from pathlib import Path
sys.argv = ["sessionkeeper", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("app", run_name="__main__")
except SystemExit as exc:
    code = exc.code
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
sys.stderr.write(f"\nexit={code} peak_mb={int(hwm.split()[1]) / 1024}\n")
"""


@pytest.mark.parametrize("case", [pytest.param("bomb", marks=pytest.mark.slow), "lying size",
                                  pytest.param("too many entries", marks=pytest.mark.slow)])
def test_zip_bombs_bounded(case: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    """The RemoteAuth zip route (tests/test_import_sources.py checks each case's message):
    1 GiB of zeros in 1 MB, an entry holding 64 MiB that claims 1 KiB, 50,001 entries."""
    from tests.test_import_sources import HOSTILE  # its zip builders

    source = HOSTILE[case][0](tmp_path / "RemoteAuth-bot.zip")
    proc = subprocess.run([sys.executable, "-c", _CLI_CHILD, "import", "victim", str(source)],
                          env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    print("child cli:", case, last)
    assert last.startswith("exit=1 "), proc.stderr[-2000:]
    assert float(last.split("peak_mb=")[1]) < PEAK_LIMIT_MB, last
