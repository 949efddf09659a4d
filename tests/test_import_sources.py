"""`sessionkeeper import` from whatsapp-web.js: RemoteAuth zips made by the real library (as a
file, and as base64 text piped from psql), LocalAuth folders, and hostile zips refused with
nothing committed. Real Chromium logs into the demo site; the real daemon boots from each import.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.errors import CorruptSnapshot, UserError
from app.snapshot.local_storage import LoginKey
from app.targets import DEMO_LOGIN_KEY
from app.vault.sources import decode_base64, detect_source
from tests.support.daemon import DAEMON_SESSION, Daemon, free_port
from tests.support.inspect_profile import demo_page
from tests.support.node import npm_packages, run_node
from tests.support.vault_db import generations, sql

ROOT = Path(__file__).resolve().parent.parent
SESSION = DAEMON_SESSION  # the session the daemon fixture restores
VICTIM = "victim"
NODE_PACKAGES = ("whatsapp-web.js", "archiver", "unzipper", "fs-extra")

# whatsapp-web.js's own RemoteAuth, driven as a Client would: setup() gives it the client,
# beforeBrowserInitialized() makes its userDataDir, the logged-in profile goes there (as
# Chromium would have left it), and storeRemoteSession() zips it and hands it to the store.
REMOTE_AUTH_SCRIPT = r"""
const fs = require('fs');
const path = require('path');
const { RemoteAuth } = require('whatsapp-web.js');
(async () => {
  const store = {
    sessionExists: async () => false,
    // Released versions pass the session's name, newer ones its path: the zip is in dataPath.
    save: async ({ session }) => fs.copyFileSync(
      path.join(auth.dataPath, `${path.basename(session)}.zip`), process.env.SK_ZIP_OUT),
    extract: async () => { throw new Error('no stored session'); },
    delete: async () => {},
  };
  const auth = new RemoteAuth({
    clientId: 'bot', dataPath: process.env.SK_DATA_PATH, store, backupSyncIntervalMs: 60000,
  });
  auth.setup({ options: { puppeteer: {} } });
  await auth.beforeBrowserInitialized();
  fs.cpSync(process.env.SK_PROFILE, auth.userDataDir, { recursive: true });
  await auth.storeRemoteSession();
  console.log(JSON.stringify({ userDataDir: auth.userDataDir, sessionName: auth.sessionName }));
})().catch((err) => { console.error(err); process.exit(1); });
"""


@dataclass(frozen=True)
class LoggedIn:
    """A Chromium profile logged into the demo site served on port."""

    profile: Path
    port: int


async def _log_in(profile: Path, port: int) -> None:
    async with demo_page(profile, port, message_rate=120) as (site, page):
        await page.wait_for_function("document.body.dataset.state == 'qr'", timeout=20000)
        assert site.link()
        await page.wait_for_function("document.body.dataset.state == 'ready'", timeout=20000)
        await asyncio.sleep(6)  # Chromium writes localStorage about 5 s after a change


@pytest.fixture(scope="module")
def logged_in(tmp_path_factory: pytest.TempPathFactory) -> LoggedIn:
    """One demo login for the module (the daemons below serve the demo site on its port:
    the login key lives in localStorage of that origin)."""
    port = free_port()
    profile = tmp_path_factory.mktemp("demo-login") / "profile"
    asyncio.run(_log_in(profile, port))
    assert LoginKey(f"http://127.0.0.1:{port}", DEMO_LOGIN_KEY).state_of(profile) == "ready"
    return LoggedIn(profile, port)


@pytest.fixture
def daemon_env(daemon_env: dict[str, str], logged_in: LoggedIn) -> dict[str, str]:
    return {**daemon_env, "SESSIONKEEPER_DEMO_PORT": str(logged_in.port)}


@pytest.fixture(scope="module")
def remoteauth_zip(logged_in: LoggedIn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`RemoteAuth-bot.zip` as whatsapp-web.js's RemoteAuth writes it for the logged-in profile."""
    modules = npm_packages(*NODE_PACKAGES)
    work = tmp_path_factory.mktemp("remoteauth")
    out = work / "RemoteAuth-bot.zip"
    ran = run_node(REMOTE_AUTH_SCRIPT, modules, env={
        "SK_PROFILE": str(logged_in.profile), "SK_DATA_PATH": str(work / ".wwebjs_auth"),
        "SK_ZIP_OUT": str(out)})
    assert json.loads(ran.stdout.strip().splitlines()[-1])["sessionName"] == "RemoteAuth-bot"
    with zipfile.ZipFile(out) as zf:
        tops = {n.split("/")[1] for n in zf.namelist() if n.startswith("Default/")} - {""}
    # RemoteAuth keeps these two folders of Default and nothing else.
    assert tops == {"IndexedDB", "Local Storage"}, tops
    return out


@pytest.fixture
def plain_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The CLI against the test database with a TMPDIR of its own (every import, refused or
    not, must leave it empty)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    return {**cli_env, "TMPDIR": str(tmp)}


@pytest.fixture
def import_env(plain_env: dict[str, str], logged_in: LoggedIn) -> dict[str, str]:
    """plain_env on the demo target of the logged-in profile (whose login key it reads)."""
    return {**plain_env, "SESSIONKEEPER_TARGET": "demo",
            "SESSIONKEEPER_DEMO_PORT": str(logged_in.port)}


def run_cli(env: dict[str, str], *args: str,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "app", *args], env=env, cwd=ROOT, capture_output=True,
        timeout=120, input=stdin if stdin is not None else b"")
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())


def import_json(env: dict[str, str], session: str, source: str,
                stdin: bytes | None = None) -> dict[str, Any]:
    proc = run_cli(env, "import", session, source, "--json", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return one_json(proc.stdout)


def one_json(stdout: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    out: dict[str, Any] = json.loads(lines[0])
    return out


def assert_tmp_clean(env: dict[str, str]) -> None:
    assert os.listdir(env["TMPDIR"]) == [], "the import left temp files behind"


def stored(url: str, session: str) -> dict[str, Any]:
    """What the database holds for a session: its row, generations and chunks."""
    return {"session": sql(url, "SELECT count(*) FROM sessions WHERE id = $1", session),
            "generations": generations(url, session),
            "chunks": sql(url, "SELECT count(*) FROM chunks WHERE session_id = $1", session)}


def assert_imported_ready(out: dict[str, Any], source: str, session: str = SESSION) -> None:
    assert out["session_id"] == session and out["source"] == source
    assert out["login_state"] == "ready" and "warning" not in out
    assert out["changed"] is True and out["generation"] == 1
    assert out["files"] > 0 and out["bytes_raw"] > 0 and isinstance(out["duration_ms"], int)


def boots_ready(start: Callable[..., Daemon], generation: int) -> None:
    """The daemon restores the imported generation and is logged in without a QR code."""
    daemon = start()
    assert daemon.wait_for("session_restored", 60)["generation"] == generation
    daemon.wait_for("ready", 60)
    assert "qr_required" not in daemon.names()
    assert daemon.readyz()[0] == 200
    daemon.kill_all()


# -- the real whatsapp-web.js sources ------------------------------------------------------

def test_remoteauth_zip_boots_ready(remoteauth_zip: Path, import_env: dict[str, str],
                                    database_url: str, start: Callable[..., Daemon]) -> None:
    out = import_json(import_env, SESSION, str(remoteauth_zip))
    assert_imported_ready(out, "remoteauth-zip")
    assert_tmp_clean(import_env)
    again = import_json(import_env, SESSION, str(remoteauth_zip))
    assert again["changed"] is False and again["generation"] == 1
    assert again["login_state"] == "ready"
    assert stored(database_url, SESSION)["generations"] == [
        {"generation": 1, "kind": "import", "login_state": "ready"}]
    boots_ready(start, 1)


def test_remoteauth_base64_piped_from_psql(remoteauth_zip: Path, import_env: dict[str, str],
                                          database_url: str,
                                          start: Callable[..., Daemon]) -> None:
    text = base64.b64encode(remoteauth_zip.read_bytes()).decode()

    # How bots kept it: a text column of a table of their own.
    sql(database_url, 'CREATE TABLE wwebjs_sessions (id text PRIMARY KEY, '
        '"sessionData" text NOT NULL)')
    sql(database_url, "INSERT INTO wwebjs_sessions VALUES ('RemoteAuth-bot', $1)", text)
    query = """select "sessionData" from wwebjs_sessions where id = 'RemoteAuth-bot'"""
    command = f"{sys.executable} -m app import {SESSION} - --json"
    if shutil.which("psql"):
        pipeline = f"psql -Atc {shlex.quote(query)} {shlex.quote(database_url)} | {command}"
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], env=import_env,
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    else:  # what psql -At prints: the value and a newline
        proc = subprocess.run(shlex.split(command), env=import_env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120, input=text + "\n")
    assert proc.returncode == 0, proc.stderr
    out = one_json(proc.stdout)
    assert_imported_ready(out, "remoteauth-base64")
    assert_tmp_clean(import_env)
    logged = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    event = next(e for e in logged if e.get("event") == "snapshot_imported")
    assert event["session_id"] == SESSION and event["source"] == "remoteauth-base64"
    assert event["generation"] == 1 and event["login_state"] == "ready"
    boots_ready(start, 1)


def test_localauth_folder_and_its_parent(logged_in: LoggedIn, import_env: dict[str, str],
                                         tmp_path: Path, database_url: str,
                                         start: Callable[..., Daemon]) -> None:
    auth = tmp_path / ".wwebjs_auth"
    shutil.copytree(logged_in.profile, auth / "session-bot", symlinks=True)
    out = import_json(import_env, SESSION, str(auth / "session-bot"))
    assert_imported_ready(out, "localauth")
    via_parent = import_json(import_env, "via-parent", str(auth))
    assert_imported_ready(via_parent, "localauth", "via-parent")
    assert (via_parent["files"], via_parent["bytes_raw"]) == (out["files"], out["bytes_raw"])
    assert os.listdir(auth) == ["session-bot"], "the import wrote beside the user's folder"
    assert_tmp_clean(import_env)

    shutil.copytree(logged_in.profile, auth / "session", symlinks=True)
    proc = run_cli(import_env, "import", "third", str(auth))
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if "error" in line] == [
        f"sessionkeeper: error: {auth} holds 2 LocalAuth sessions (session, session-bot): "
        f"name one, e.g. {auth / 'session'}"]
    assert stored(database_url, "third")["session"] == 0

    # The way back: restore writes a folder LocalAuth uses as it is, and it reads back the same.
    back = tmp_path / "back" / ".wwebjs_auth"
    proc = run_cli(import_env, "restore", SESSION, "--profile", str(back / "session"))
    assert proc.returncode == 0, proc.stderr
    key = LoginKey(f"http://127.0.0.1:{import_env['SESSIONKEEPER_DEMO_PORT']}", DEMO_LOGIN_KEY)
    assert key.state_of(back / "session") == "ready"
    again = import_json(import_env, SESSION, str(back))
    assert again["changed"] is False and again["generation"] == 1
    boots_ready(start, 1)


def test_import_without_the_login_warns(remoteauth_zip: Path, import_env: dict[str, str],
                                        database_url: str) -> None:
    # The demo site on another port is another origin: its login key is not in this profile.
    env = {**import_env, "SESSIONKEEPER_DEMO_PORT": str(free_port())}
    out = import_json(env, "elsewhere", str(remoteauth_zip))
    assert out["login_state"] == "qr" and out["changed"] is True
    origin = f"http://127.0.0.1:{env['SESSIONKEEPER_DEMO_PORT']}"
    assert origin in out["warning"] and repr(DEMO_LOGIN_KEY) in out["warning"]
    assert stored(database_url, "elsewhere")["generations"] == [
        {"generation": 1, "kind": "import", "login_state": "qr"}]


# -- hostile and mistaken sources ------------------------------------------------------------

PREFERENCES = ("Default/Preferences", b'{"profile": {}}')


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we want
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def patch_entry(path: Path, name: str, *, flags: int | None = None, method: int | None = None,
                size: int | None = None, offset: int | None = None) -> None:
    """Make one entry's headers lie (local and central header alike, as a forger would)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        local = zf.getinfo(name).header_offset
    central = data.find(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(name)] != name.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    for value, fmt, at_local, at_central in ((flags, "<H", 6, 8), (method, "<H", 8, 10),
                                            (size, "<I", 22, 24)):
        if value is not None:
            struct.pack_into(fmt, data, local + at_local, value)
            struct.pack_into(fmt, data, central + at_central, value)
    if offset is not None:
        struct.pack_into("<I", data, central + 42, offset)
    path.write_bytes(bytes(data))


def special(name: str, kind: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (kind | 0o777) << 16
    return info


def bomb(path: Path) -> Path:
    """1 GiB of zeros in one entry, about 1 MB compressed (streamed: no GiB in memory)."""
    info = zipfile.ZipInfo("Default/IndexedDB/https_x_0.indexeddb.leveldb/000003.log")
    info.compress_type = zipfile.ZIP_DEFLATED
    zero = bytes(1024 * 1024)
    with zipfile.ZipFile(path, "w") as zf, zf.open(info, "w", force_zip64=True) as fh:
        for _ in range(1024):
            fh.write(zero)
    return path


def many(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(50_001):
            zf.writestr(f"Default/IndexedDB/x.indexeddb.blob/1/{i}", b"")
    return path


def lying_size(path: Path) -> Path:
    name = "Default/Local Storage/leveldb/000003.log"
    make_zip(path, [PREFERENCES, (name, bytes(64 * 1024 * 1024))])
    patch_entry(path, name, size=1024)  # claims 1 KiB, holds 64 MiB
    return path


def overlapping(path: Path) -> Path:
    make_zip(path, [PREFERENCES, ("Default/Local Storage/leveldb/CURRENT", b"MANIFEST-1\n")])
    patch_entry(path, "Default/Local Storage/leveldb/CURRENT", offset=0)  # Preferences' data
    return path


def flipped(path: Path) -> Path:
    make_zip(path, [PREFERENCES, ("Default/Local Storage/leveldb/000003.log", os.urandom(4096))])
    data = bytearray(path.read_bytes())
    data[1200:1216] = bytes(b ^ 0xFF for b in data[1200:1216])
    path.write_bytes(bytes(data))
    return path


def truncated(path: Path) -> Path:
    make_zip(path, [PREFERENCES, ("Default/Local Storage/leveldb/000003.log", os.urandom(8192))])
    path.write_bytes(path.read_bytes()[:5000])
    return path


def patched(**fields: int) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        make_zip(path, [PREFERENCES])
        patch_entry(path, PREFERENCES[0], **fields)
        return path
    return build


def entries(*items: tuple[str | zipfile.ZipInfo, bytes]) -> Callable[[Path], Path]:
    return lambda path: make_zip(path, [PREFERENCES, *items])


def text(data: bytes) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return build


HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zip slip": (entries(("../../escaped", b"x")), "is not a safe relative path"),
    "absolute path": (entries(("/tmp/sk-absolute-escape", b"x")), "is not a safe relative"),
    "backslashes": (entries(("..\\..\\escaped", b"x")), "backslash"),
    "drive letter": (entries(("C:/Users/escaped", b"x")), "names a drive"),
    "symlink entry": (entries((special("Default/Cookies", stat.S_IFLNK), b"/etc/passwd")),
                      "is a symbolic link"),
    "device entry": (entries((special("Default/Cookies", stat.S_IFCHR), b"")),
                     "special file"),
    "duplicate names": (entries(PREFERENCES), "appears twice"),
    "file and folder": (entries(("Default/Preferences/x", b"x")), "both a file and a folder"),
    "too many entries": (many, "50001 entries"),
    "bomb": (bomb, "compression ratio"),
    "lying size": (lying_size, "damaged zip"),
    "overlapping entries": (overlapping, "overlaps"),
    "encrypted": (patched(flags=1), "is encrypted"),
    "unknown method": (patched(method=99), "compression method 99"),
    "corrupt data": (flipped, "damaged zip"),
    "truncated zip": (truncated, "damaged zip"),
    "garbage": (text(os.urandom(100_000)), "is neither a sessionkeeper export, a RemoteAuth zip "
                "(or its base64 text) nor a LocalAuth folder"),
    "torn leveldb": (entries(("Default/Local Storage/leveldb/CURRENT", b"MANIFEST-000009\n")),
                     "missing_manifest MANIFEST-000009"),
    "no profile data": (lambda path: make_zip(path, [("hello.txt", b"hi"),
                                                     ("Default/Cache/data_0", b"x" * 100)]),
                        "holds no Chromium profile data"),
}
AS_BASE64_TOO = ("zip slip", "symlink entry", "bomb", "encrypted", "truncated zip",
                 "no profile data")
STDIN_HOSTILE: dict[str, tuple[bytes, str]] = {
    "base64 garbage": (b"UEsDBBQAAAAIA" + b"%not base64%" * 100 + b"\n", "is not valid base64"),
    "base64 after padding": (base64.b64encode(b"PK\x03\x04\0") + b"AAAA\n",
                             "is not valid base64"),
    "text": (b"hello, this is not a session\n", "standard input is neither"),
    "nothing": (b"", "standard input is neither"),
}


def assert_refused(proc: subprocess.CompletedProcess[str], needle: str, env: dict[str, str],
                   url: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("sessionkeeper: error: "), proc.stderr
    assert needle in errors[0], proc.stderr
    assert stored(url, VICTIM) == {"session": 0, "generations": [], "chunks": 0}
    assert_tmp_clean(env)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_zip_refused(case: str, plain_env: dict[str, str], tmp_path: Path,
                             database_url: str) -> None:
    build, needle = HOSTILE[case]
    source = build(tmp_path / "RemoteAuth-bot.zip")
    assert_refused(run_cli(plain_env, "import", VICTIM, str(source)), needle, plain_env,
                   database_url)
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/sk-absolute-escape").exists()
    # Its base64 text fares no better.
    if case in AS_BASE64_TOO:
        proc = run_cli(plain_env, "import", VICTIM, "-",
                       stdin=base64.b64encode(source.read_bytes()))
        assert_refused(proc, needle, plain_env, database_url)


@pytest.mark.parametrize("case", list(STDIN_HOSTILE))
def test_hostile_stdin_refused(case: str, plain_env: dict[str, str], database_url: str) -> None:
    data, needle = STDIN_HOSTILE[case]
    assert_refused(run_cli(plain_env, "import", VICTIM, "-", stdin=data), needle, plain_env,
                   database_url)


def test_torn_or_open_localauth_refused(plain_env: dict[str, str], tmp_path: Path,
                                        database_url: str) -> None:
    session = tmp_path / ".wwebjs_auth" / "session"
    leveldb = session / "Default" / "Local Storage" / "leveldb"
    leveldb.mkdir(parents=True)
    (leveldb / "CURRENT").write_text("MANIFEST-000009\n")  # names a MANIFEST that is not there
    assert_refused(run_cli(plain_env, "import", VICTIM, str(session.parent)),
                   "missing_manifest MANIFEST-000009", plain_env, database_url)
    # A Chromium of this host still holds it (its SingletonLock names a live process).
    (session / "SingletonLock").symlink_to(f"{socket.gethostname()}-{os.getpid()}")
    assert_refused(run_cli(plain_env, "import", VICTIM, str(session)),
                   f"is open in a running Chromium (pid {os.getpid()})", plain_env, database_url)


# -- detection by content ----------------------------------------------------------------------

def test_detection_reads_content_not_names(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a", [PREFERENCES])
    b64 = base64.b64encode(archive.read_bytes())
    export = tmp_path / "RemoteAuth-bot.zip"  # a tar, whatever its name says
    with tarfile.open(export, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(archive, arcname="sessionkeeper-export.json")
    files = {
        "backup.tar": (archive.read_bytes(), "remoteauth-zip"),
        "session.zip": (b"\n  " + b64 + b"\n", "remoteauth-base64"),
        "export.skx": (b"data:application/zip;base64," + b64, "remoteauth-base64"),
        "sfx.bin": (b"#!/bin/sh\nexit 0\n" + archive.read_bytes(), "remoteauth-zip"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    assert detect_source(export) == "export"
    for name, (_, kind) in files.items():
        assert detect_source(tmp_path / name) == kind, name

    user_data = tmp_path / "RemoteAuth-bot.zip.d"
    (user_data / "Default").mkdir(parents=True)
    assert detect_source(user_data) == "localauth"
    parent = tmp_path / "backup.tar.d"
    (parent / "session-bot" / "Default").mkdir(parents=True)
    assert detect_source(parent) == "localauth"

    for name, data in (("RemoteAuth-bot.b64", b"UEs" + bytes(range(128, 192))),
                       ("session.zip.b64", base64.b64encode(b"not a zip at all")),
                       ("export.tar", b"\0" * 1024)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match="is neither"):
            detect_source(tmp_path / name)
    (tmp_path / ".wwebjs_auth" / "RemoteAuth-bot").mkdir(parents=True)
    with pytest.raises(UserError, match="is neither"):
        detect_source(tmp_path / ".wwebjs_auth")
    with pytest.raises(UserError, match="is not a file or a folder"):
        detect_source(tmp_path / "missing.zip")


@pytest.mark.parametrize("form", ["plain", "wrapped", "crlf", "data-url", "url-safe",
                                  "unpadded"])
def test_base64_forms(form: str, tmp_path: Path) -> None:
    raw = os.urandom(10_001)  # not a multiple of 3: the text ends in padding
    b64 = base64.b64encode(raw)
    text = {
        "plain": b64 + b"\n",
        "wrapped": b"\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)),
        "crlf": b"\r\n".join(b64[i : i + 64] for i in range(0, len(b64), 64)) + b"\r\n",
        "data-url": b"  data:application/zip;base64," + b64,
        "url-safe": base64.urlsafe_b64encode(raw),
        "unpadded": b64.rstrip(b"="),
    }[form]
    src = tmp_path / "src"
    src.write_bytes(text)
    assert decode_base64(src, tmp_path / "out") == len(raw)
    assert (tmp_path / "out").read_bytes() == raw


def test_base64_errors(tmp_path: Path) -> None:
    good = base64.b64encode(os.urandom(300))
    for i, bad in enumerate((good[:100] + b"*" + good[100:], good + b"A", good[:-2] + b"==AB",
                             b"data:application/zip," + good)):
        src = tmp_path / f"bad{i}"
        src.write_bytes(bad)
        with pytest.raises(CorruptSnapshot, match="not valid base64"):
            decode_base64(src, tmp_path / f"out{i}")
