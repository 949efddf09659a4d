"""The keys of the store a process works on, loaded once when its pool opens.

The keyring holds the vault keys this process was given (SESSIONKEEPER_ENCRYPTION_KEY, and
SESSIONKEEPER_ENCRYPTION_KEY_OLD during a rotation) and the store's addressing secret, read
from `vault_keys` (sealed under each key). `open_pool` loads it and ties it to the pool; each
vault operation that takes the pool (`with_keyring`) installs it in a context variable for
the code it runs (tasks and worker threads started there inherit it), so the functions below
it need no extra argument: `active()` gives it, and refuses to answer outside an operation.

Started with a key the store does not know while it knows others, or without a key on a
sealed store, the process stops with one line before it touches anything.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg

from app.errors import ConfigError
from app.settings import Settings
from app.snapshot.manifest import ADDRESSING_HMAC, ADDRESSING_SHA256, Manifest
from app.snapshot.sealing import (
    KeySet,
    SessionCodec,
    VaultKey,
    fingerprint,
    session_address_key,
)
from app.store.repo import Conn

_ADDRESSING_AD = b"sk-addressing\0"


@dataclass(frozen=True)
class Keyring:
    """Keys and addressing secret of one store (none of either: a plaintext store)."""

    keys: KeySet
    addressing_secret: bytes | None = None

    @property
    def sealed(self) -> bool:
        """True when new rows are sealed."""
        return self.keys.current is not None

    @property
    def addressing(self) -> str:
        """The scheme new manifests are written with."""
        return ADDRESSING_HMAC if self.addressing_secret is not None else ADDRESSING_SHA256

    def codec(self, session_id: str, addressing: str | None = None,
              level: int = 3) -> SessionCodec:
        """A codec for a session: the keyring's own addressing (for writing), or a stored
        manifest's (for reading)."""
        scheme = addressing or self.addressing
        key = (session_address_key(self.addressing_secret, session_id)
               if self.addressing_secret is not None else None)
        return SessionCodec(session_id, scheme, key, self.keys, level)

    def reader(self, session_id: str, manifest: Manifest) -> SessionCodec:
        """A codec that checks a manifest's chunks by the manifest's own addressing."""
        return self.codec(session_id, manifest.addressing)

    def tag(self, addressing: str | None = None) -> str:
        """Names an addressing scheme and secret (a stat cache is only trusted under it)."""
        scheme = addressing or self.addressing
        if scheme == ADDRESSING_HMAC and self.addressing_secret is not None:
            return f"{scheme}:{fingerprint(self.addressing_secret)}"
        return scheme


PLAINTEXT = Keyring(KeySet(None, {}))
_ACTIVE: contextvars.ContextVar[Keyring | None] = contextvars.ContextVar("keyring", default=None)
# Pools opened by open_pool, by id (asyncpg's Pool takes no weak reference).
_BY_POOL: dict[int, Keyring] = {}


def active() -> Keyring:
    """The keyring of the store the running vault operation works on; plaintext outside
    any (a unit test calling a vault function directly). `commit_manifest` refuses a
    plaintext commit into a keyed store (`check_installed`), so an operation that forgot to
    install its keyring cannot write plaintext generations into an encrypted store."""
    return _ACTIVE.get() or PLAINTEXT


async def check_installed(conn: Conn) -> None:
    """RuntimeError when no keyring is installed and the store is keyed."""
    if _ACTIVE.get() is None and await conn.fetchval("SELECT EXISTS (SELECT FROM vault_keys)"):
        raise RuntimeError("no keyring installed for a write to an encrypted store: a vault "
                           "operation must run under keyring.with_keyring")


@contextmanager
def installed(keyring: Keyring) -> Iterator[Keyring]:
    """Make `keyring` the active one for the code inside (and the tasks it starts)."""
    token = _ACTIVE.set(keyring)
    try:
        yield keyring
    finally:
        _ACTIVE.reset(token)


@contextmanager
def registered(pool: asyncpg.Pool, keyring: Keyring) -> Iterator[None]:
    """Tie a keyring to a pool for as long as the pool is open."""
    _BY_POOL[id(pool)] = keyring
    try:
        yield
    finally:
        _BY_POOL.pop(id(pool), None)


def of(pool: asyncpg.Pool) -> Keyring:
    """The keyring of a pool opened by open_pool (plaintext for any other pool)."""
    return _BY_POOL.get(id(pool), PLAINTEXT)


P = ParamSpec("P")
T = TypeVar("T")


def with_keyring(
    fn: Callable[Concatenate[asyncpg.Pool, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[asyncpg.Pool, P], Coroutine[Any, Any, T]]:
    """Run a vault operation that takes the pool first under that pool's keyring."""
    @functools.wraps(fn)
    async def run(pool: asyncpg.Pool, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with installed(of(pool)):
            return await fn(pool, *args, **kwargs)

    return run


def keys_from_settings(settings: Settings) -> KeySet:
    """The vault keys the settings give (ConfigError naming the variable for a bad one)."""
    current = old = None
    if settings.encryption_key is not None:
        current = VaultKey.parse(settings.encryption_key.get_secret_value(),
                                 "SESSIONKEEPER_ENCRYPTION_KEY")
    if settings.encryption_key_old is not None:
        old = VaultKey.parse(settings.encryption_key_old.get_secret_value(),
                             "SESSIONKEEPER_ENCRYPTION_KEY_OLD")
        if current is None:
            raise ConfigError("SESSIONKEEPER_ENCRYPTION_KEY_OLD is set without "
                              "SESSIONKEEPER_ENCRYPTION_KEY (the key to rotate to)")
    return make_keyset(current, old)


def make_keyset(current: VaultKey | None, *others: VaultKey | None) -> KeySet:
    """A key set sealing with `current` and reading with it and the others."""
    readable = {k.id: k for k in (current, *others) if k is not None}
    return KeySet(current, readable)


async def load_keyring(conn: Conn, keys: KeySet) -> Keyring:
    """The store's keyring for these keys: its addressing secret opened with one of them, and
    a row added for the current key (its first use, or a rotation's). ConfigError, before
    anything is written, when the store is sealed and none of the keys opens it."""
    rows = {r["key_id"]: bytes(r["addressing"])
            for r in await conn.fetch("SELECT key_id, addressing FROM vault_keys")}
    if keys.current is None:
        if rows:
            raise ConfigError(
                f"this store is encrypted (key id {', '.join(sorted(rows))}) and "
                "SESSIONKEEPER_ENCRYPTION_KEY is not set: set it to the store's key")
        return Keyring(keys)
    secret = None
    for key_id, key in keys.readable.items():
        if key_id in rows:
            secret = key.open(rows[key_id], _ADDRESSING_AD + key_id.encode(),
                              "the store's addressing secret")
            break
    if secret is None and rows:
        given = ", ".join(keys.readable)
        raise ConfigError(
            f"SESSIONKEEPER_ENCRYPTION_KEY (key id {given}) is not a key of this store (sealed "
            f"with key id {', '.join(sorted(rows))}): set the key it was sealed with, or give "
            "that one as SESSIONKEEPER_ENCRYPTION_KEY_OLD to rotate to the new key")
    current = keys.current
    if secret is None:
        secret = os.urandom(32)
    if current.id not in rows:
        sealed = current.seal(secret, _ADDRESSING_AD + current.id.encode())
        await conn.execute(
            "INSERT INTO vault_keys (key_id, addressing) VALUES ($1, $2) "
            "ON CONFLICT (key_id) DO NOTHING", current.id, sealed)
        if not rows:
            # Two processes keying an empty store at once: the first row wins.
            stored = await conn.fetchval(
                "SELECT addressing FROM vault_keys WHERE key_id = $1", current.id)
            secret = current.open(bytes(stored), _ADDRESSING_AD + current.id.encode(),
                                  "the store's addressing secret")
    return Keyring(keys, secret)


async def forget_key(conn: Conn, key_id: str) -> None:
    """Drop a key's row (once nothing is sealed with it any more)."""
    await conn.execute("DELETE FROM vault_keys WHERE key_id = $1", key_id)
