"""A PostgreSQL cluster of our own that can be stopped and started (outages, chaos runs).

initdb into a temporary folder, on a free loopback TCP port, trust authentication, no unix
socket. The binaries: PG_BINDIR if set, else the newest Debian /usr/lib/postgresql/*/bin, else
`pg_config --bindir`, else the ones the `pgserver` wheel ships. PostgreSQL refuses to run as
root, so as root the cluster runs as the `postgres` system user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg

from tests.support.daemon import free_port


def find_bindir() -> Path:
    """A folder holding initdb, pg_ctl and postgres."""
    if os.environ.get("PG_BINDIR"):
        chosen = Path(os.environ["PG_BINDIR"])
        if not all((chosen / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            raise RuntimeError(f"PG_BINDIR={chosen} holds no initdb, pg_ctl and postgres")
        return chosen
    candidates: list[Path] = []

    def version(p: Path) -> float:
        try:
            return float(p.parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    with contextlib.suppress(ImportError):
        import pgserver

        candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; "
                       "install postgresql or set PG_BINDIR")


class PgCluster:
    """initdb + pg_ctl on a private folder and port; stop() and start() at will."""

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self.bindir = find_bindir()
        self.root = root or Path(tempfile.mkdtemp(prefix="sk-pgcluster-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = port or free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user to run "
                                   "PostgreSQL as") from None
            self.user = "postgres"
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-instructions", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                       "unix_socket_directories = ''\nmax_connections = 200\n"
                       "shared_buffers = 64MB\n")
        self.running = False
        self.start()

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        proc = subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=timeout, check=False, user=self.user, cwd=self.root)
        if proc.returncode != 0:
            log = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-1000:]}\n{log}")

    @property
    def url(self) -> str:
        """URL of the `postgres` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60",
                  "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: connections are closed; immediate: as a crash would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        async def create() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.url_for(name)

    def close(self) -> None:
        """Stop the server and remove its folder."""
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
