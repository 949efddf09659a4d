"""Least privilege (issue 13 item 5): a role with row rights only runs the daemon; migrations
are the owner's (`sessionkeeper migrate`, or at start with SESSIONKEEPER_MIGRATE=true); the
reading commands never run DDL; every table lives in a schema of its own, beside another
app's `public.sessions`; Chromium's environment holds no secret; what we write is owner-only.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.child_env import browser_env, exec_env
from app.snapshot.keep import KeepRules
from app.snapshot.staging import capture
from app.store import repo
from app.store.migrate import load_migrations, migrate
from app.store.schema import server_settings
from tests.support.daemon import DAEMON_SESSION, Daemon, browser_pids, free_port, login
from tests.support.profile_tree import ProfileTree, build_profile

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "sessionkeeper"


def _with(url: str, *, db: str | None = None, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{db}" if db else parts.path))


def _run_sql(url: str, *statements: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def _fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exactly one line on stderr (no traceback)."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines()
             if ln.startswith("sessionkeeper: error:") or "Traceback" in ln]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def user_tables(url: str) -> list[tuple[str, str]]:
    """(schema, table) of every table outside the system schemas."""
    return sorted((r[0], r[1]) for r in _fetch(
        url, "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%'"))


def schema_exists(url: str, name: str = SCHEMA) -> bool:
    return bool(_fetch(url, "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", name))


@dataclass
class Roles:
    """A database with an owner role and a row-rights-only role, set up as the README says."""

    admin_url: str  # superuser, on this database
    owner_url: str
    app_url: str
    owner: str
    app: str


def _readme_role_sql() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The database: its own schema and a least-privilege role", 1)[1]
    return section.split("```sql\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def empty_db(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database (no default search_path: only what the app sets counts)."""
    name = f"sk_lp_{uuid.uuid4().hex[:12]}"
    _run_sql(pg_server_url, f'CREATE DATABASE "{name}"')
    yield _with(pg_server_url, db=name)
    _run_sql(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def roles(pg_server_url: str, empty_db: str) -> Iterator[Roles]:
    """The README's role SQL run on an empty database, with role names of this test's own."""
    if urlsplit(pg_server_url).hostname in (None, ""):
        pytest.skip("roles are reached over TCP with trust authentication here")
    tag = uuid.uuid4().hex[:8]
    owner, app = f"sk_owner_{tag}", f"sk_app_{tag}"
    db = urlsplit(empty_db).path.lstrip("/")
    sql = _readme_role_sql()
    sql = re.sub(r"\bsessionkeeper_owner\b", owner, sql)
    sql = re.sub(r"\bsessionkeeper_app\b", app, sql)
    sql = re.sub(r"\bmydb\b", f'"{db}"', sql)
    _run_sql(empty_db, sql)
    yield Roles(empty_db, _with(empty_db, user=owner), _with(empty_db, user=app), owner, app)
    _run_sql(pg_server_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)',
             f"DROP ROLE IF EXISTS {owner}", f"DROP ROLE IF EXISTS {app}")


def _env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SESSIONKEEPER_", "PG")) and k not in ("PORT", "DATABASE_URL")}
    env.update(DATABASE_URL=url, SESSIONKEEPER_DATA_DIR=str(tmp_path / "state"),
               SESSIONKEEPER_LOG_FORMAT="json", **extra)
    return env


def _daemon_env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return _env(url, tmp_path, PORT=str(free_port()), SESSIONKEEPER_TARGET="demo",
                SESSIONKEEPER_DEMO_PORT=str(free_port()), SESSIONKEEPER_DEMO_MESSAGE_RATE="600",
                SESSIONKEEPER_SESSION_ID=DAEMON_SESSION,
                SESSIONKEEPER_PROFILE_DIR=str(tmp_path / "profile"),
                SESSIONKEEPER_LEASE_TTL="6", SESSIONKEEPER_LOG_QR="true", **extra)


def _new_key(tmp_path: Path) -> str:
    """A vault key from `sessionkeeper keygen`."""
    proc = cli(_env("postgresql://unused@127.0.0.1/x", tmp_path), "keygen")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").split("=", 1)
                for item in raw.split(b"\0") if b"=" in item)


def _not_owner_only(root: Path) -> list[str]:
    """Paths under root (root included) that group or others may use."""
    bad = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        if stat.S_IMODE(st.st_mode) & 0o077:
            bad.append(f"{path.relative_to(root.parent)} {oct(stat.S_IMODE(st.st_mode))}")
    return bad


# --- roles -----------------------------------------------------------------------------------


def test_row_rights_role_runs_the_daemon_end_to_end(roles: Roles, tmp_path: Path) -> None:
    """The owner runs `sessionkeeper migrate`; a role with SELECT/INSERT/UPDATE/DELETE only
    boots the daemon (default SESSIONKEEPER_MIGRATE: nothing pending, so no DDL), logs in,
    snapshots, takes the final snapshot on SIGTERM, and restores it on the next boot.
    Chromium's environment holds none of the secrets the daemon was given."""
    migrated = cli(_env(roles.owner_url, tmp_path), "migrate", "--json")
    assert migrated.returncode == 0, migrated.stderr
    assert user_tables(roles.admin_url) == sorted(
        (SCHEMA, t) for t in {t for _, t in user_tables(roles.admin_url)})
    # The app role may not create anything (the test would prove nothing otherwise).
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        _run_sql(roles.app_url, f"CREATE TABLE {SCHEMA}.probe (id int)")

    # A keyed store: the keyring's row is written by the row-rights role too.
    secrets = {"SESSIONKEEPER_HTTP_TOKEN": "http-token-" + uuid.uuid4().hex,
               "SESSIONKEEPER_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook-{uuid.uuid4().hex}",
               "PGPASSWORD": "pg-" + uuid.uuid4().hex,
               "SESSIONKEEPER_ENCRYPTION_KEY": _new_key(tmp_path)}
    env = _daemon_env(roles.app_url, tmp_path, **secrets)
    demo_port = int(env["SESSIONKEEPER_DEMO_PORT"])
    first = Daemon(env)
    try:
        login(first, demo_port)
        checkpoint = first.wait_for("login_checkpoint", 30)
        # The checkpoint closed the browser; it is launched again right after.
        deadline = time.monotonic() + 30
        while not (browsers := browser_pids(first.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert browsers, first.log_text()
        for pid in browsers:
            environ = _environ_of(pid)
            assert "DATABASE_URL" not in environ
            leaked = [k for k, v in environ.items()
                      if k.startswith(("SESSIONKEEPER_", "PG")) or v in secrets.values()
                      or roles.app_url in v]
            assert leaked == [], leaked
        time.sleep(3)  # the page writes chat messages meanwhile: the final snapshot has news
        first.signal(signal.SIGTERM)
        assert first.wait_exit(40) == 0, first.log_text()
        done = first.wait_for("shutdown_completed")
        assert done["generation"] > checkpoint.get("generation", 0)
    finally:
        first.kill_all()
    assert _not_owner_only(Path(env["SESSIONKEEPER_PROFILE_DIR"])) == []
    assert "migration_applied" not in first.names()
    assert _fetch(roles.admin_url, f"SELECT count(*) FROM {SCHEMA}.vault_keys")[0][0] == 1

    shutil.rmtree(env["SESSIONKEEPER_PROFILE_DIR"])
    second = Daemon(env)
    try:
        restored = second.wait_for("session_restored", 60)
        assert restored["generation"] == done["generation"]
        second.wait_for("ready", 60)
        assert "qr_required" not in second.names()
        second.stop_cleanly()
    finally:
        second.kill_all()
    assert _not_owner_only(Path(env["SESSIONKEEPER_PROFILE_DIR"])) == []
    assert not any(e.get("level") == "error" for e in first.events + second.events), (
        first.log_text() + second.log_text())


def test_row_rights_role_cannot_migrate_and_says_so(roles: Roles, tmp_path: Path) -> None:
    """A role without DDL rights on an unmigrated store: one line saying to run `migrate` with
    the owner role, for the daemon's start and a writing command alike; nothing is created."""
    env = _env(roles.app_url, tmp_path)
    line = one_error_line(cli(env, "snapshot", "s1", "--profile", str(tmp_path)))
    assert "sessionkeeper migrate" in line
    daemon = cli(_daemon_env(roles.app_url, tmp_path), "run")
    assert "sessionkeeper migrate" in one_error_line(daemon)
    assert user_tables(roles.admin_url) == []


def test_chunk_statistics_are_skipped_without_ownership(roles: Roles, tmp_path: Path) -> None:
    """ANALYZE after a big upload needs the table's owner: the row-rights role skips it
    quietly (PostgreSQL would only warn), the owner runs it."""
    assert cli(_env(roles.owner_url, tmp_path), "migrate").returncode == 0

    async def refresh(url: str) -> tuple[bool, list[str]]:
        notices: list[str] = []
        conn = await asyncpg.connect(url, server_settings=server_settings(SCHEMA))
        conn.add_log_listener(lambda _c, msg: notices.append(str(msg)))
        try:
            return await repo.refresh_chunk_stats(conn), notices
        finally:
            await conn.close()

    assert asyncio.run(refresh(roles.app_url)) == (False, [])
    assert asyncio.run(refresh(roles.owner_url)) == (True, [])


# --- SESSIONKEEPER_MIGRATE and the reading commands ---------------------------------------


def test_migrate_false_on_an_unmigrated_store_is_one_line(empty_db: str, tmp_path: Path) -> None:
    """SESSIONKEEPER_MIGRATE=false: the daemon and a writing command stop with one line naming
    `sessionkeeper migrate`, and create nothing; `sessionkeeper migrate` still migrates."""
    env = _env(empty_db, tmp_path, SESSIONKEEPER_MIGRATE="false")
    daemon = cli(_daemon_env(empty_db, tmp_path, SESSIONKEEPER_MIGRATE="false"), "run")
    assert daemon.returncode == 1
    assert "sessionkeeper migrate" in one_error_line(daemon)
    assert "sessionkeeper migrate" in one_error_line(cli(env, "sessions", "add", "s1"))
    assert user_tables(empty_db) == [] and not schema_exists(empty_db)
    assert cli(env, "migrate").returncode == 0
    assert cli(env, "sessions", "add", "s1").returncode == 0


def test_migrate_false_on_a_store_behind_the_code(empty_db: str, tmp_path: Path) -> None:
    """A store missing the newest migration: one line, nothing applied."""
    folder = tmp_path / "old-migrations"
    folder.mkdir()
    newest = load_migrations()[-1]
    for m in load_migrations()[:-1]:
        (folder / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)

    async def old() -> None:
        conn = await asyncpg.connect(empty_db)
        try:
            await migrate(conn, folder)
        finally:
            await conn.close()

    asyncio.run(old())
    env = _env(empty_db, tmp_path, SESSIONKEEPER_MIGRATE="false")
    line = one_error_line(cli(env, "sessions", "add", "s1"))
    assert "behind" in line and f"{newest.version:04d}_{newest.name}" in line
    assert "sessionkeeper migrate" in line
    versions = {r[0] for r in _fetch(empty_db, f"SELECT version FROM {SCHEMA}.schema_migrations")}
    assert newest.version not in versions


def test_reading_commands_never_run_ddl(empty_db: str, tmp_path: Path) -> None:
    """sessions, snapshots, export and restore on an empty database, with the default
    SESSIONKEEPER_MIGRATE=true: one line each, and the catalog holds no schema and no table."""
    env = _env(empty_db, tmp_path)
    for args in (["sessions"], ["snapshots", "s1"],
                 ["export", "s1", str(tmp_path / "out.skx")],
                 ["restore", "s1", "--profile", str(tmp_path / "p")]):
        line = one_error_line(cli(env, *args))
        assert "sessionkeeper migrate" in line, (args, line)
    assert user_tables(empty_db) == []
    assert not schema_exists(empty_db)
    assert not (tmp_path / "out.skx").exists()


# --- the schema ----------------------------------------------------------------------------


def test_tables_live_in_their_schema_beside_another_apps_tables(empty_db: str,
                                                                  tmp_path: Path) -> None:
    """A bot's app already has public.sessions and a Rails-style public.schema_migrations:
    migrate leaves both alone and puts ours in schema sessionkeeper; the CLI works there."""
    _run_sql(empty_db,
             "CREATE TABLE public.sessions (sid serial PRIMARY KEY, data jsonb NOT NULL)",
             """INSERT INTO public.sessions (data) VALUES ('{"user": 1}')""",
             "CREATE TABLE public.schema_migrations (version varchar PRIMARY KEY)",
             "INSERT INTO public.schema_migrations VALUES ('20240101000000')")

    def foreign() -> tuple[Any, ...]:
        return (
            [tuple(r) for r in _fetch(empty_db, "SELECT sid, data FROM public.sessions")],
            [tuple(r) for r in _fetch(empty_db, "SELECT * FROM public.schema_migrations")],
            [tuple(r) for r in _fetch(
                empty_db, "SELECT table_name, column_name, data_type FROM "
                "information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2")],
        )

    before = foreign()
    env = _env(empty_db, tmp_path)
    assert cli(env, "migrate").returncode == 0
    assert cli(env, "sessions", "add", "s1").returncode == 0
    assert foreign() == before
    tables = user_tables(empty_db)
    assert ("public", "sessions") in tables and ("public", "schema_migrations") in tables
    ours = {t for s, t in tables if s == SCHEMA}
    assert {"sessions", "snapshots", "chunks", "schema_migrations"} <= ours
    assert {s for s, _ in tables} == {"public", SCHEMA}
    assert [r[0] for r in _fetch(empty_db, f"SELECT id FROM {SCHEMA}.sessions")] == ["s1"]
    functions = _fetch(empty_db, "SELECT n.nspname FROM pg_catalog.pg_proc p JOIN "
                       "pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
                       "WHERE p.proname = 'sessionkeeper_fence_snapshot'")
    assert [r[0] for r in functions] == [SCHEMA]
    # The fencing trigger finds our sessions table even for a client whose search_path
    # reaches public first (an owner in psql), where the other app's `sessions` is.
    _run_sql(empty_db, f"UPDATE {SCHEMA}.sessions SET lease_token = 5 WHERE id = 's1'")
    with pytest.raises(asyncpg.PostgresError) as fenced:
        _run_sql(empty_db, f"INSERT INTO {SCHEMA}.snapshots (session_id, generation, kind, "
                 "lease_token) VALUES ('s1', 1, 'periodic', 1)")
    assert fenced.value.sqlstate == "SK001", fenced.value
    # Another schema name is honoured.
    other = _env(empty_db, tmp_path, SESSIONKEEPER_DB_SCHEMA="sk_other")
    assert cli(other, "migrate").returncode == 0
    assert {"sessions", "chunks"} <= {t for s, t in user_tables(empty_db) if s == "sk_other"}


def test_old_store_in_public_is_moved(empty_db: str, tmp_path: Path,
                                      profile: ProfileTree) -> None:
    """A store from before the schema (tables, the fencing function, its trigger, all in
    public): migrate moves it into the schema in one go and logs it; its generations restore,
    the trigger still fences, and public holds nothing of ours any more."""
    env = _env(empty_db, tmp_path)
    assert cli(env, "snapshot", "s1", "--profile", str(profile.root)).returncode == 0
    # Put it back where an older version kept it.
    ours = [t for s, t in user_tables(empty_db) if s == SCHEMA]
    _run_sql(empty_db, *[f"ALTER TABLE {SCHEMA}.{t} SET SCHEMA public" for t in ours],
             f"ALTER FUNCTION {SCHEMA}.sessionkeeper_fence_snapshot() RESET search_path",
             f"ALTER FUNCTION {SCHEMA}.sessionkeeper_fence_snapshot() SET SCHEMA public",
             f"DROP SCHEMA {SCHEMA}")
    # Reading commands refuse, and say why.
    line = one_error_line(cli(env, "snapshots", "s1"))
    assert "public" in line and "sessionkeeper migrate" in line

    moved = cli(env, "migrate")
    assert moved.returncode == 0, moved.stderr
    assert '"event": "store_moved_to_schema"' in moved.stderr
    assert {s for s, _ in user_tables(empty_db)} == {SCHEMA}
    assert sorted(t for _, t in user_tables(empty_db)) == sorted(ours)
    listed = cli(env, "snapshots", "s1", "--json")
    assert listed.returncode == 0 and '"generation": 1' in listed.stdout
    restored = cli(env, "restore", "s1", "--profile", str(tmp_path / "back"))
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "back" / "Local State").exists()
    # The trigger came along and still refuses a write outside a held lease.
    _run_sql(empty_db, f"UPDATE {SCHEMA}.sessions SET owner = 'someone', "
             "lease_token = lease_token + 1, lease_expires_at = now() + interval '1 hour'")
    (profile.root / "new-file").write_text("changed")
    line = one_error_line(cli(env, "snapshot", "s1", "--profile", str(profile.root)))
    assert "someone" in line


# --- processes and files ------------------------------------------------------------------


def test_chromium_environment_holds_no_secret(start: Callable[..., Daemon],
                                              database_url: str, tmp_path: Path) -> None:
    """/proc/<pid>/environ of Chromium's main process: no DATABASE_URL, no PG* variable, no
    SESSIONKEEPER_* variable, and none of their values anywhere."""
    secrets = {"SESSIONKEEPER_HTTP_TOKEN": "http-token-" + uuid.uuid4().hex,
               "PGPASSWORD": "pg-" + uuid.uuid4().hex,
               "SESSIONKEEPER_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/{uuid.uuid4().hex}",
               "SESSIONKEEPER_ENCRYPTION_KEY": _new_key(tmp_path)}
    daemon = start(**secrets)
    daemon.wait_for("browser_started", 60)
    browsers = browser_pids(daemon.proc.pid)
    assert browsers, daemon.log_text()
    for pid in browsers:
        environ = _environ_of(pid)
        assert "HOME" in environ or "PATH" in environ  # it is read, and not empty
        leaked = [k for k, v in environ.items()
                  if k == "DATABASE_URL" or k.startswith(("SESSIONKEEPER_", "PG"))
                  or v in secrets.values() or database_url in v]
        assert leaked == [], leaked
    daemon.stop_cleanly()


def test_child_environments_drop_our_secrets() -> None:
    """Chromium gets no database setting and no SESSIONKEEPER_* variable; an exec child keeps
    its environment but never the vault keys."""
    environ = {"PATH": "/usr/bin", "HOME": "/home/x", "DATABASE_URL": "postgresql://u:p@h/d",
               "PGPASSWORD": "p", "PGHOST": "h", "OLD_DATABASE_URL": "postgresql://o",
               "SESSIONKEEPER_ENCRYPTION_KEY": "k", "SESSIONKEEPER_ENCRYPTION_KEY_OLD": "o",
               "SESSIONKEEPER_HTTP_TOKEN": "t", "SESSIONKEEPER_WEBHOOK_URL": "http://w",
               "SESSIONKEEPER_PROFILE_DIR": "/p", "DISPLAY": ":0"}
    assert browser_env(environ) == {"PATH": "/usr/bin", "HOME": "/home/x", "DISPLAY": ":0"}
    child = exec_env(environ)
    assert "SESSIONKEEPER_ENCRYPTION_KEY" not in child
    assert "SESSIONKEEPER_ENCRYPTION_KEY_OLD" not in child
    assert child["DATABASE_URL"] == environ["DATABASE_URL"]
    assert child["SESSIONKEEPER_HTTP_TOKEN"] == "t"


def test_files_we_write_are_owner_only(database_url: str, tmp_path: Path) -> None:
    """A profile made with 0644 files and 0755 folders (as the manifest records them):
    snapshot, export and restore by the CLI (started with umask 022) leave only 0600 files in
    0700 folders: the stat cache and marker beside the profile, the export, the restored tree."""
    tree = build_profile(tmp_path / "live" / "profile", idb_bytes=256 * 1024)
    os.chmod(tree.root / "Local State", 0o755)  # an executable bit the owner keeps
    env = _env(database_url, tmp_path)
    old = os.umask(0o022)
    try:
        for args in (["snapshot", "s1", "--profile", str(tree.root)],
                     ["export", "s1", str(tmp_path / "out" / "s1.skx")],
                     ["restore", "s1", "--profile", str(tmp_path / "back" / "profile")]):
            (tmp_path / "out").mkdir(exist_ok=True)
            proc = cli(env, *args)
            assert proc.returncode == 0, (args, proc.stderr)
    finally:
        os.umask(old)
    work = tree.root.parent / f".{tree.root.name}.sessionkeeper"
    assert any(work.iterdir())
    assert _not_owner_only(work) == []
    export = tmp_path / "out" / "s1.skx"
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    back = tmp_path / "back" / "profile"
    assert _not_owner_only(back) == []
    assert stat.S_IMODE((back / "Local State").stat().st_mode) == 0o700
    assert stat.S_IMODE((back / "Default" / "Preferences").stat().st_mode) == 0o600


def test_staging_folders_are_owner_only(tmp_path: Path) -> None:
    """A staged copy is made of 0700 folders whatever the umask and the live modes."""
    tree = build_profile(tmp_path / "live" / "profile", idb_bytes=256 * 1024)
    old = os.umask(0o022)
    try:
        staged = capture(tree.root, tmp_path / "work", KeepRules())
    finally:
        os.umask(old)
    try:
        dirs = [p for p in [staged.root, *staged.root.rglob("*")] if p.is_dir()]
        assert len(dirs) > 2
        assert [p for p in dirs if stat.S_IMODE(p.stat().st_mode) != 0o700] == []
        assert stat.S_IMODE((tmp_path / "work").stat().st_mode) == 0o700
    finally:
        shutil.rmtree(staged.root)
