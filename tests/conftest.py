"""Test fixtures: a real PostgreSQL, a fresh database per test, profile-shaped trees.

The server is TEST_DATABASE_URL if set, else the one at 127.0.0.1:5432, else an embedded one
(pgserver) started for the test run. Each test gets its own database copied from a migrated
template (CREATE DATABASE ... TEMPLATE), so tests never share state.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app.settings import Settings
from app.store.db import open_pool
from app.store.migrate import migrate
from app.store.schema import DEFAULT_SCHEMA
from app.vault.options import VaultOptions
from tests.support import leak_watch
from tests.support.daemon import DAEMON_SESSION, Daemon, free_port
from tests.support.pgproxy import PgProxy
from tests.support.profile_tree import ProfileTree, build_profile


def slow_tests_wanted(markexpr: str, environ: Mapping[str, str]) -> bool:
    """Whether tests marked `slow` run: when SK_SLOW=1, or when -m names the marker (`-m slow`,
    `-m "slow and chaos"`; `-m "not slow"` deselects them anyway)."""
    return environ.get("SK_SLOW") == "1" or re.search(r"\bslow\b", markexpr) is not None


def pytest_configure(config: pytest.Config) -> None:
    """Watch every process a test starts for secrets in its output (tests/support/leak_watch.py);
    the controller makes the folder where workers leave what they saw."""
    leak_watch.install()
    workerinput = getattr(config, "workerinput", None)
    leak_watch.worker = workerinput["workerid"] if workerinput else ""
    if not leak_watch.worker:
        leak_watch.set_share_dir(Path(tempfile.mkdtemp(prefix="sk-leak-watch-")))


def pytest_runtest_setup(item: pytest.Item) -> None:
    leak_watch.current_test = item.nodeid


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's captured output (the controller sees every test's report)."""
    if leak_watch.share_dir() is not None and not leak_watch.worker:
        leak_watch.note_output(report.capstdout, report.nodeid)
        leak_watch.note_output(report.capstderr, report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Workers hand over what they saw; the controller fails the run on any leak."""
    folder = leak_watch.share_dir()
    if folder is None:
        return
    if leak_watch.worker:
        leak_watch.save(folder, leak_watch.worker)
        return
    leak_watch.load_all(folder)
    shutil.rmtree(folder, ignore_errors=True)
    found = leak_watch.leaks()
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = leak_watch.report_lines(found)
        if reporter is not None:
            reporter.write_line(text, red=True)
        else:
            print(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `slow` unless asked for (pyproject.toml documents the marker)."""
    if slow_tests_wanted(str(config.getoption("markexpr") or ""), os.environ):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or SK_SLOW=1")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _local_server_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server (database `postgres`) the tests may create databases on."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    if _local_server_up() and not os.environ.get("SK_TEST_EMBEDDED"):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    import pgserver

    # A short path: the server's unix socket lives there.
    data = Path("/tmp") / f"sk-test-pg-{os.getpid()}"
    server = pgserver.get_server(str(data), cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A migrated template database, created once per test run."""
    name = f"sk_tpl_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        await _admin(pg_server_url, f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(_with_db(pg_server_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(_admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh database for one test, already migrated."""
    name = f"sk_t_{uuid.uuid4().hex[:12]}"
    # The database's default search_path lets a test's own raw SQL name the tables unqualified;
    # the app sets it on every connection it makes (tests/test_least_privilege.py checks that
    # on databases without this default).
    asyncio.run(_admin(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"',
                       f'ALTER DATABASE "{name}" SET search_path TO {DEFAULT_SCHEMA}'))
    yield _with_db(pg_server_url, name)
    asyncio.run(_admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database_url(pg_server_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = f"sk_e_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(pg_server_url, f'CREATE DATABASE "{name}"'))
    yield _with_db(pg_server_url, name)
    asyncio.run(_admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path / "state")  # type: ignore[arg-type]


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(settings, migrate=False) as pool:
        yield pool


@pytest.fixture
def options() -> VaultOptions:
    return VaultOptions()


@pytest.fixture
def profile(tmp_path: Path) -> ProfileTree:
    """A small profile-shaped tree (about 3 MB)."""
    return build_profile(tmp_path / "live" / "profile", idb_bytes=2 * 1024 * 1024)


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running the CLI as a subprocess against the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env.update(DATABASE_URL=database_url, SESSIONKEEPER_DATA_DIR=str(tmp_path / "state"),
               SESSIONKEEPER_LOG_FORMAT="json")
    return env



@pytest.fixture
def demo_message_rate() -> str:
    """Messages a minute the demo page writes in daemon tests (a test module may override)."""
    return "600"


@pytest.fixture
def daemon_env(database_url: str, tmp_path: Path, demo_message_rate: str) -> dict[str, str]:
    """Environment of a daemon on the demo target, with its own ports, database and dirs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SESSIONKEEPER_") and k not in ("PORT", "DATABASE_URL")}
    env.update(
        DATABASE_URL=database_url, PORT=str(free_port()),
        SESSIONKEEPER_TARGET="demo", SESSIONKEEPER_DEMO_PORT=str(free_port()),
        SESSIONKEEPER_DEMO_MESSAGE_RATE=demo_message_rate,
        SESSIONKEEPER_SESSION_ID=DAEMON_SESSION,
        SESSIONKEEPER_PROFILE_DIR=str(tmp_path / "profile"),
        SESSIONKEEPER_DATA_DIR=str(tmp_path / "state"), SESSIONKEEPER_LOG_FORMAT="json",
        # A killed owner's lease runs out quickly, so the next boot need not wait 30 s.
        SESSIONKEEPER_LEASE_TTL="6",
        SESSIONKEEPER_LOG_QR="true",  # tests read qr_payload from the JSON lines
    )
    return env


@pytest.fixture
def start(daemon_env: dict[str, str]) -> Iterator[Callable[..., Daemon]]:
    """Starts daemons (env overrides as keywords); every one is killed after the test."""
    started: list[Daemon] = []

    def launch(**overrides: str) -> Daemon:
        daemon = Daemon({**daemon_env, **overrides})
        started.append(daemon)
        return daemon

    yield launch
    for daemon in started:
        daemon.kill_all()


@pytest.fixture
def proxy(database_url: str) -> Iterator[PgProxy]:
    """A TCP proxy in front of the test's database that can black-hole it (connections hang,
    not refused): the daemon is given proxy.url_for(database_url)."""
    parts = urlsplit(database_url)
    if not parts.port:
        pytest.skip("the test database is reached over a socket, not TCP: nothing to proxy")
    p = PgProxy(parts.hostname or "127.0.0.1", parts.port)
    yield p
    p.close()
