"""Hostile inputs (issue 13 items 2 and 3): session ids that are paths, and decompression bombs.

Real PostgreSQL throughout. Memory peaks are measured in a child process (VmHWM), where the
test's own allocations do not count.
"""

from __future__ import annotations

import io
import json
import tarfile
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import asyncpg
import pytest
import structlog

from app.claims import Claimer
from app.cli import build_parser
from app.errors import ConfigError, CorruptSnapshot
from app.metrics import Metrics
from app.session import SessionRunner
from app.session_ids import is_session_id
from app.settings import Settings, load_settings
from app.store import leases
from app.store.migrate import load_migrations, migrate
from app.vault.archive import export_generation, import_generation
from app.vault.options import VaultOptions
from app.vault.save import save_snapshot
from tests.support.profile_tree import ProfileTree

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
