"""Reading a site's localStorage out of a copy of a Chromium profile (no browser needed).

A session's login state, where no page can be read (a bot's own Chromium holds the profile),
comes from the site's own marker in localStorage: WhatsApp Web counts a session as logged in
when `last-wid-md` is there. Chromium keeps localStorage in a LevelDB
(`<profile>/Local Storage/leveldb`) whose keys are `_` + origin + NUL + the item's name (a
0x01 byte and Latin-1, or a 0x00 byte and UTF-16-LE); values carry the same leading byte.

Only ever read a staged or restored copy, never a folder a browser has open: the database is
copied into a temporary folder and opened there with plyvel (LevelDB's own code, which
replays the log and reads compressed tables), because opening it recovers and rewrites it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import plyvel

from app.errors import CaptureInvalid, ConfigError
from app.snapshot.keep import LOCAL_STORAGE_ONLY
from app.snapshot.staging import capture

LOCAL_STORAGE_DIR = "Local Storage/leveldb"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str:
    """The origin of an http(s) URL as Chromium writes it in storage keys."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http(s) URL")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    shown = "" if port is None or port == _DEFAULT_PORTS[parts.scheme] else f":{port}"
    return f"{parts.scheme}://{host}{shown}"


@dataclass(frozen=True, slots=True)
class LoginKey:
    """A localStorage item whose presence on an origin means "logged in"."""

    origin: str
    key: str

    def state_of(self, root: Path) -> str:
        """'ready' when some profile under root holds the key on the origin, else 'qr'."""
        return "ready" if read_item(root, self.origin, self.key) else "qr"

    def peek(self, profile: Path, work_dir: Path, attempts: int = 3) -> str | None:
        """The state of a live profile, read from a staged copy of its localStorage alone
        (validated like any capture); None when every copy was torn."""
        try:
            tree = capture(profile, work_dir, LOCAL_STORAGE_ONLY, attempts)
        except CaptureInvalid:
            return None
        try:
            return self.state_of(tree.root)
        finally:
            shutil.rmtree(tree.root, ignore_errors=True)


def _item_keys(origin: str, key: str) -> list[bytes]:
    prefix = b"_" + origin.encode() + b"\x00"
    forms = [prefix + b"\x00" + key.encode("utf-16-le")]
    with contextlib.suppress(UnicodeEncodeError):  # only Latin-1 names have the 8-bit form
        forms.insert(0, prefix + b"\x01" + key.encode("latin-1"))
    return forms


def _decode(value: bytes) -> str:
    if value[:1] == b"\x01":
        return value[1:].decode("latin-1")
    if value[:1] == b"\x00":
        return value[1:].decode("utf-16-le", errors="replace")
    return value.decode("utf-8", errors="replace")


def storage_folders(root: Path) -> list[Path]:
    """The localStorage databases of every profile (Default, Profile N) under root."""
    found = [p / LOCAL_STORAGE_DIR for p in sorted(root.glob("Default")) +
             sorted(root.glob("Profile *"))]
    return [p for p in found if (p / "CURRENT").is_file()]


def read_item(root: Path, origin: str, key: str) -> str | None:
    """The value of localStorage[key] on origin in the profile copy at root; None if absent
    (or the database cannot be read: then nothing can be said to be there)."""
    for folder in storage_folders(root):
        value = _read_folder(folder, _item_keys(origin, key))
        if value:
            return value
    return None


def _read_folder(folder: Path, keys: list[bytes]) -> str | None:
    with tempfile.TemporaryDirectory(prefix="sk-localstorage-") as tmp:
        copy = Path(tmp) / "db"
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("LOCK"))
        try:
            db = plyvel.DB(str(copy), create_if_missing=False)
        except plyvel.Error:
            return None
        try:
            for k in keys:
                value = db.get(k)
                if value is not None:
                    return _decode(value)
        finally:
            db.close()
    return None
