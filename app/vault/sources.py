"""What `sessionkeeper import` reads, told by content (never by name), and importing it.

A source is an export of ours (a tar), a whatsapp-web.js RemoteAuth zip (`Default/IndexedDB`
and `Default/Local Storage` at its root), the base64 text of such a zip (how many bots kept it
in a text column), or a LocalAuth folder (`.wwebjs_auth/session[-<clientId>]`, a Chromium
user-data-dir, or the `.wwebjs_auth` folder holding one). Everything but an export becomes a
profile folder that is snapshotted like a live capture: staged, validated, committed whole.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import re
import shutil
import socket
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import anyio
import asyncpg

from app.errors import CaptureInvalid, CorruptSnapshot, UserError
from app.log import get_logger
from app.progress import NullProgress, ProgressSink
from app.snapshot.keep import KeepRules
from app.snapshot.local_storage import LoginKey
from app.snapshot.safezip import UnsafeZip, ZipLimits, extract_zip
from app.snapshot.staging import pid_alive, scan_live
from app.store import repo
from app.vault.archive import import_generation
from app.vault.options import VaultOptions
from app.vault.save import save_snapshot

SourceKind = Literal["export", "remoteauth-zip", "remoteauth-base64", "localauth"]
STDIN = "-"
STDIN_NAME = "standard input"
ACCEPTED = "a sessionkeeper export, a RemoteAuth zip (or its base64 text) nor a LocalAuth folder"

_MIB = 1024**2
_BLOCK = 4 * _MIB
# The largest zip worth decoding (what it may unpack to, plus headers), and the largest base64
# text of one that standard input may bring.
MAX_ZIP_BYTES = ZipLimits().max_total + 256 * _MIB
MAX_SPOOL_BYTES = MAX_ZIP_BYTES // 3 * 4 + 64 * _MIB
_HEAD = 4096
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_TAR_MAGIC = b"ustar"
_TAR_MAGIC_AT = 257
_WHITESPACE = b" \t\r\n\v\f"
# The URL-safe alphabet's two letters: standard base64 never holds them, so mapping is safe.
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_DATA_URL = re.compile(rb"data:[^,]{0,256},")
_SESSION_DIR = re.compile(r"session(-[-\w]+)?")


@dataclass(frozen=True, slots=True)
class Source:
    """A source ready to import: an export file, or a profile folder to snapshot."""

    kind: SourceKind
    shown: str  # how messages name it: the path given, or "standard input"
    file: Path | None  # the export (kind "export")
    root: Path | None  # the Chromium user-data-dir (every other kind)
    workspace: Path  # private, removed when the source is closed
    started: float


def _neither(shown: str, why: str = "") -> UserError:
    return UserError(f"{shown} is neither {ACCEPTED}{f' ({why})' if why else ''}")


def _is_user_data_dir(path: Path) -> bool:
    return ((path / "Local State").is_file() or (path / "Default").is_dir()
            or any(path.glob("Profile *")))


def localauth_profile(path: Path, shown: str | None = None) -> Path:
    """The Chromium user-data-dir of a LocalAuth folder: path itself, or the one
    `session[-<clientId>]` folder in it (a `.wwebjs_auth` folder)."""
    shown = shown or str(path)
    if _is_user_data_dir(path):
        return path
    sessions = sorted(c for c in path.iterdir() if c.is_dir() and _SESSION_DIR.fullmatch(c.name))
    if len(sessions) == 1:
        return sessions[0]
    if sessions:
        names = ", ".join(s.name for s in sessions)
        raise UserError(f"{shown} holds {len(sessions)} LocalAuth sessions ({names}): name one, "
                        f"e.g. {path / sessions[0].name}")
    raise _neither(shown, "a folder with no Chromium profile and no session* folder")


def _looks_like_base64_zip(head: bytes) -> bool:
    text = head.lstrip(_WHITESPACE)
    if text.startswith(b"data:"):
        match = _DATA_URL.match(text)
        if not match or not match[0].endswith(b";base64,"):
            return False
        text = text[match.end():]
    text = text.translate(_URLSAFE, _WHITESPACE)[:8]
    try:
        return len(text) == 8 and base64.b64decode(text, validate=True).startswith(_ZIP_MAGIC)
    except binascii.Error:
        return False


def detect_source(path: Path, shown: str | None = None) -> SourceKind:
    """What path holds, told by its content; UserError with one line when nothing fits."""
    shown = shown or str(path)
    if path.is_dir():
        localauth_profile(path, shown)
        return "localauth"
    if not path.is_file():
        raise UserError(f"{shown} is not a file or a folder")
    with path.open("rb") as fh:
        head = fh.read(_HEAD)
    if not head:
        raise _neither(shown, "it is empty")
    if head[_TAR_MAGIC_AT:_TAR_MAGIC_AT + len(_TAR_MAGIC)] == _TAR_MAGIC:
        return "export"
    if head.startswith(_ZIP_MAGIC):
        return "remoteauth-zip"
    if _looks_like_base64_zip(head):
        return "remoteauth-base64"
    if zipfile.is_zipfile(path):  # a zip behind a prefix (a self-extracting archive)
        return "remoteauth-zip"
    raise _neither(shown)


def decode_base64(src: Path, dst: Path, limit: int = MAX_ZIP_BYTES, shown: str = "") -> int:
    """Decode base64 text from src into dst, block by block (it may be large): whitespace
    anywhere, an optional `data:...;base64,` prefix, either alphabet. The bytes written."""
    shown = shown or str(src)

    def bad(why: str) -> CorruptSnapshot:
        return CorruptSnapshot(f"{shown} is not valid base64 text ({why}); nothing imported")

    written = 0
    carry = b""
    started = ended = False
    with src.open("rb") as fin, dst.open("xb") as out:
        while block := fin.read(_BLOCK):
            if not started:
                block = block.lstrip(_WHITESPACE)
                if not block:
                    continue
                started = True
                if block.startswith(b"data:"):
                    match = _DATA_URL.match(block)
                    if not match or not match[0].endswith(b";base64,"):
                        raise bad("a data: URL that is not base64")
                    block = block[match.end():]
            text = carry + block.translate(_URLSAFE, _WHITESPACE)
            if ended and text:
                raise bad("text after the closing '='")
            cut = len(text) - len(text) % 4
            chunk, carry = text[:cut], text[cut:]
            if not chunk:
                continue
            try:
                data = base64.b64decode(chunk, validate=True)
            except binascii.Error as exc:
                raise bad(f"{exc} after character {written // 3 * 4}") from None
            ended = chunk.endswith(b"=")
            written += len(data)
            if written > limit:
                raise bad(f"it decodes to more than {limit} bytes")
            out.write(data)
        if carry:
            if ended or len(carry) % 4 == 1:
                raise bad("it ends mid-character: truncated?")
            try:
                data = base64.b64decode(carry + b"=" * (-len(carry) % 4), validate=True)
            except binascii.Error as exc:
                raise bad(str(exc)) from None
            written += len(data)
            out.write(data)
    return written


def _spool(stream: BinaryIO, target: Path, limit: int) -> int:
    """Standard input into a file (detection reads it twice; it may be gigabytes)."""
    size = 0
    with target.open("xb") as out:
        while block := stream.read(_BLOCK):
            size += len(block)
            if size > limit:
                raise UserError(f"{STDIN_NAME} brings more than {limit} bytes: too large for a "
                                "session profile")
            out.write(block)
    return size


def _refuse_open_profile(root: Path, shown: str) -> None:
    """A folder a running Chromium writes to would be copied torn: ask to stop the bot."""
    try:
        holder = str((root / "SingletonLock").readlink())  # "<hostname>-<pid>"
    except OSError:
        return
    host, _, pid = holder.rpartition("-")
    if host == socket.gethostname() and pid.isdigit() and pid_alive(int(pid)):
        raise UserError(f"{shown} is open in a running Chromium (pid {pid}): stop the "
                        "whatsapp-web.js client first, then import")


def _prepare(spec: str, workspace: Path, rules: KeepRules, stdin: BinaryIO | None,
             limits: ZipLimits | None, started: float) -> Source:
    if spec == STDIN:
        stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if stream is None:
            raise UserError(f"'-' reads the source from {STDIN_NAME}, and there is none")
        if stream.isatty():
            raise UserError(f"'-' reads the source from {STDIN_NAME}, which is a terminal: pipe "
                            "it in, e.g. psql -Atc 'select ...' | sessionkeeper import SESSION -")
        path, shown = workspace / "stdin", STDIN_NAME
        _spool(stream, path, MAX_SPOOL_BYTES)
    else:
        path, shown = Path(spec).expanduser(), spec
    kind = detect_source(path, shown)
    if kind == "export":
        return Source(kind, shown, path, None, workspace, started)
    if kind == "localauth":
        root = localauth_profile(path, shown)
        _refuse_open_profile(root, shown)
    else:
        archive = path
        if kind == "remoteauth-base64":
            archive = workspace / "decoded.zip"
            decode_base64(path, archive, MAX_ZIP_BYTES, shown)
            if spec == STDIN:
                path.unlink()  # the disk holds one copy at a time
        root = workspace / "profile"
        root.mkdir(mode=0o700)
        try:
            extract_zip(archive, root, limits)
        except UnsafeZip as exc:
            raise UnsafeZip(f"{shown}: {exc}; nothing imported") from None
    files, _ = scan_live(root, rules)
    if not files:
        raise UserError(f"{shown} holds no Chromium profile data (no Default/IndexedDB, "
                        "Default/Local Storage, cookies or other kept file); nothing imported")
    return Source(kind, shown, None, root, workspace, started)


@contextlib.asynccontextmanager
async def open_source(
    spec: str, rules: KeepRules, *, stdin: BinaryIO | None = None,
    limits: ZipLimits | None = None,
) -> AsyncIterator[Source]:
    """Read the source a path or `-` (standard input) names into a private temp folder,
    refusing what is hostile or holds no profile; the folder goes when the block ends."""
    started = time.monotonic()
    workspace = Path(await anyio.to_thread.run_sync(
        lambda: tempfile.mkdtemp(prefix="sk-import-")))
    try:
        yield await anyio.to_thread.run_sync(
            _prepare, spec, workspace, rules, stdin, limits, started)
    finally:
        # Shielded: an interrupted import still removes what it unpacked.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, workspace, True)


def _warning(source: Source, key: LoginKey | None) -> str:
    if source.kind == "export" or key is None:
        return ("the imported generation holds no login (it was labelled 'qr'): the session "
                "will show a QR code")
    return (f"the imported profile holds no login: no localStorage item {key.key!r} on "
            f"{key.origin}; the session will show a QR code (wrong SESSIONKEEPER_TARGET or "
            "SESSIONKEEPER_LOGIN_KEY, or a logged-out bot?)")


async def _import_export(pool: asyncpg.Pool, session_id: str, source: Source,
                         progress: ProgressSink, force: bool) -> dict[str, Any]:
    assert source.file is not None
    try:
        out = await import_generation(pool, session_id, source.file, progress=progress,
                                      force=force)
    except UserError as exc:
        # A spooled standard input has a temp name nobody knows.
        raise type(exc)(str(exc).replace(str(source.file), source.shown)) from None
    async with pool.acquire() as conn:
        gens = await repo.list_generations(conn, session_id)
    label = next((g.login_state for g in gens if g.generation == out["generation"]), None)
    return {**out, "source": source.kind, "login_state": label}


async def import_source(
    pool: asyncpg.Pool, session_id: str, source: Source, options: VaultOptions, *,
    login_key: LoginKey | None, progress: ProgressSink | None = None, force: bool = False,
) -> dict[str, Any]:
    """Import an opened source as the newest generation of session_id (nothing is
    committed unless all of it is in; nothing while a process holds the session's lease,
    unless force); the result as plain fields."""
    progress = progress or NullProgress()
    if source.kind == "export":
        out = await _import_export(pool, session_id, source, progress, force)
    else:
        assert source.root is not None
        try:
            result = await save_snapshot(
                pool, session_id, source.root, dataclasses.replace(options, capture_attempts=1),
                kind="import", login_state=login_key.state_of if login_key else None,
                progress=progress, work_dir=source.workspace / "work", force=force)
        except CaptureInvalid as exc:
            hint = (" (if a whatsapp-web.js client uses the folder, stop it and import again)"
                    if source.kind == "localauth" else "")
            raise CaptureInvalid(f"{source.shown}: {exc}; nothing imported{hint}") from None
        out = {"session_id": session_id, "generation": result.generation,
               "changed": result.changed, "source": source.kind, "files": result.files,
               "bytes_raw": result.bytes_raw, "bytes_uploaded": result.bytes_uploaded,
               "chunks_new": result.chunks_new, "login_state": result.login_state}
    out["duration_ms"] = int((time.monotonic() - source.started) * 1000)
    if out["login_state"] == "qr":
        out["warning"] = _warning(source, login_key)
    if source.kind != "export":  # import_generation logs its own snapshot_imported
        log = get_logger(session_id=session_id)
        fields = {k: v for k, v in out.items() if k != "session_id"}
        (log.warning if "warning" in out else log.info)("snapshot_imported", **fields)
    return out
