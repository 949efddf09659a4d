"""Encryption at rest: keys, keyed chunk addresses and sealed objects (no database here).

A vault key is 32 random bytes (`sessionkeeper keygen`, base64 in
SESSIONKEEPER_ENCRYPTION_KEY). HKDF-SHA256 derives from it a sealing key (AES-256-GCM), an
export key and its public id. The store's addressing secret is random, kept in the database
sealed under every key that may open the store (app/vault/keyring.py): rotating the key
re-seals rows but never changes an address, so nothing is uploaded twice.

A keyed session addresses a chunk by HMAC-SHA256(session addressing key, plaintext), the
session key being HMAC(addressing secret, session id): whoever reads the tables cannot tell
equal content apart across sessions, or confirm a guess of a file's content. Every chunk, list
object and manifest is sealed with a random 96-bit nonce, and the associated data binds it to
its session, address, codec and size, so a row moved to another session or address, or given
another codec or size, fails to open. The key id is part of the codec (`zstd+aes256gcm-<id>`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.errors import ConfigError, CorruptSnapshot
from app.snapshot.codec import CODEC_DELTA, CODEC_RAW, CODEC_ZSTD, Decoder, Encoder, digest
from app.snapshot.manifest import ADDRESSING_HMAC

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES
CIPHER = "aes256gcm"
# A sealed manifest starts with this magic (a zstd frame starts with 28 b5 2f fd), then the
# key id (8 bytes), then nonce and ciphertext.
MANIFEST_MAGIC = b"SKM3"
_KEY_ID_BYTES = 8
_SIZE = struct.Struct(">Q")


class KeyUnavailable(ConfigError):
    """Stored data is sealed with a key this process was not given."""


def generate_key() -> str:
    """A new vault key, base64 (what `sessionkeeper keygen` prints)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"sessionkeeper/v1/" + info).derive(secret)


class VaultKey:
    """One vault key and what HKDF derives from it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ConfigError(f"an encryption key is {KEY_BYTES} bytes, not {len(secret)}")
        self._aead = AESGCM(_hkdf(secret, b"seal"))
        self._export = AESGCM(_hkdf(secret, b"export"))
        self.id = _hkdf(secret, b"key-id")[:_KEY_ID_BYTES].hex()

    @classmethod
    def parse(cls, text: str, name: str) -> VaultKey:
        """A key from its base64 text; ConfigError naming the setting when it is not one."""
        text = text.strip()
        try:
            # Standard or URL-safe alphabet (platforms' generated secrets use either).
            secret = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{name} is not base64 (`sessionkeeper keygen` prints a "
                              "key)") from None
        if len(secret) != KEY_BYTES:
            raise ConfigError(f"{name} holds {len(secret)} bytes, a key is {KEY_BYTES} "
                              "(`sessionkeeper keygen` prints one)")
        return cls(secret)

    @property
    def codec_suffix(self) -> str:
        """What the codec of a row sealed with this key ends with."""
        return f"+{CIPHER}-{self.id}"

    def seal(self, plaintext: bytes, ad: bytes, *, export: bool = False) -> bytes:
        """nonce || AES-256-GCM(plaintext) bound to `ad`."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + (self._export if export else self._aead).encrypt(nonce, plaintext, ad)

    def open(self, sealed: bytes | memoryview, ad: bytes, what: str, *,
             export: bool = False) -> bytes:
        """The plaintext; CorruptSnapshot when the data or its binding was altered."""
        data = bytes(sealed)
        if len(data) < SEAL_OVERHEAD:
            raise CorruptSnapshot(f"{what}: too short to be sealed")
        try:
            plain: bytes = (self._export if export else self._aead).decrypt(
                data[:NONCE_BYTES], data[NONCE_BYTES:], ad)
        except InvalidTag:
            raise CorruptSnapshot(f"{what}: authentication failed (altered, moved to another "
                                  "row, or sealed with another key of the same id)") from None
        return plain


def split_codec(codec: str) -> tuple[str, str | None]:
    """(inner codec, key id or None) of a stored codec name."""
    inner, sep, rest = codec.partition("+")
    if not sep:
        return codec, None
    cipher, _, key_id = rest.partition("-")
    if cipher != CIPHER or len(key_id) != 2 * _KEY_ID_BYTES:
        return codec, ""  # unknown: refused by whoever decodes it
    return inner, key_id


def chunk_ad(session_id: str, address: bytes, codec: str, size: int) -> bytes:
    """What a sealed chunk or list object is bound to."""
    return b"sk-chunk\0" + session_id.encode() + b"\0" + address + codec.encode() + b"\0" \
        + _SIZE.pack(size)


def manifest_ad(session_id: str, key_id: str) -> bytes:
    """What a sealed manifest is bound to."""
    return b"sk-manifest\0" + session_id.encode() + b"\0" + key_id.encode()


def key_id_of_manifest(stored: bytes) -> str | None:
    """The key id a stored manifest is sealed with (None: plaintext)."""
    if not stored.startswith(MANIFEST_MAGIC):
        return None
    return stored[len(MANIFEST_MAGIC) : len(MANIFEST_MAGIC) + _KEY_ID_BYTES].hex()


@dataclass(frozen=True)
class KeySet:
    """The keys a process holds: `current` seals what it writes; any of `readable` opens."""

    current: VaultKey | None
    readable: Mapping[str, VaultKey]

    def key(self, key_id: str, what: str) -> VaultKey:
        """The key of that id; KeyUnavailable (one line, nothing touched) when not given."""
        found = self.readable.get(key_id)
        if found is None:
            have = ", ".join(sorted(self.readable)) or "none"
            raise KeyUnavailable(
                f"{what} is sealed with key id {key_id or '(unknown)'}, which this process was "
                f"not given (its keys: {have}); set SESSIONKEEPER_ENCRYPTION_KEY (or "
                "SESSIONKEEPER_ENCRYPTION_KEY_OLD while a rotation runs) to that key")
        return found


# A delta's base row as stored: its address, raw size, codec and stored bytes.
Base = tuple[bytes, int, str, bytes | memoryview]


class SessionCodec:
    """How one session's objects are addressed, encoded, sealed and checked.

    `addressing` is the scheme of the manifest being read or written: a keyed process still
    reads a plaintext generation (SHA-256 addresses) until `rekey` converts it. One instance
    per thread (its zstd contexts are not thread-safe)."""

    def __init__(self, session_id: str, addressing: str, address_key: bytes | None,
                 keys: KeySet, level: int = 3) -> None:
        if addressing == ADDRESSING_HMAC and address_key is None:
            raise KeyUnavailable(f"session {session_id!r}: a generation with keyed addresses "
                                 "cannot be read without SESSIONKEEPER_ENCRYPTION_KEY")
        self.session_id = session_id
        self.addressing = addressing
        self._address_key = address_key if addressing == ADDRESSING_HMAC else None
        self.keys = keys
        self._encoder = Encoder(level)
        self._decoder = Decoder()
        self.address: Callable[[bytes | memoryview], bytes] = (
            self._hmac if self._address_key is not None else digest)

    @property
    def sealing(self) -> bool:
        """True when what this codec writes is sealed."""
        return self.keys.current is not None

    def _hmac(self, data: bytes | memoryview) -> bytes:
        assert self._address_key is not None
        return hmac.digest(self._address_key, data, "sha256")

    def encode(self, raw: bytes, address: bytes, base: bytes | None = None) -> tuple[str, bytes]:
        """(codec, stored bytes) of a chunk or list object: compressed (against `base`, the
        raw bytes of a chunk stored whole, when that pays: see Encoder.encode_delta), then
        sealed."""
        inner, stored = (self._encoder.encode(raw) if base is None
                         else self._encoder.encode_delta(raw, base))
        key = self.keys.current
        if key is None:
            return inner, stored
        codec = inner + key.codec_suffix
        return codec, key.seal(stored, chunk_ad(self.session_id, address, codec, len(raw)))

    def unseal(self, codec: str, stored: bytes | memoryview, size: int,
               address: bytes) -> tuple[str, bytes | memoryview]:
        """(inner codec, inner bytes) of a stored row: opened when sealed, else as it is."""
        inner, key_id = split_codec(codec)
        if key_id is None:
            return codec, stored
        what = f"chunk {address.hex()[:12]}"
        key = self.keys.key(key_id, what)
        return inner, key.open(stored, chunk_ad(self.session_id, address, codec, size), what)

    def decode(self, codec: str, stored: bytes | memoryview, size: int, address: bytes,
               base: Base | None = None) -> bytes:
        """Raw bytes of a stored row, checked against its address (CorruptSnapshot); a
        delta's base row comes with it."""
        inner, data = self.unseal(codec, stored, size, address)
        return self.decode_inner(inner, data, size, address,
                                 None if base is None else self.decode_base(base, address))

    def decode_base(self, base: Base, of: bytes) -> bytes:
        """Raw bytes of a delta's base: a chunk stored whole, checked against its address."""
        digest, size, codec, data = base
        inner, opened = self.unseal(codec, data, size, digest)
        if inner not in (CODEC_ZSTD, CODEC_RAW):
            raise CorruptSnapshot(f"chunk {of.hex()[:12]}: its base {digest.hex()[:12]} is "
                                  f"not stored whole ({inner!r})")
        return self._decoder.decode(inner, opened, size, digest, self.address)

    def decode_inner(self, inner: str, data: bytes | memoryview, size: int,
                     address: bytes, base: bytes | None = None) -> bytes:
        """Raw bytes of an unsealed (compressed or raw) chunk, checked against its address;
        `base`: a delta's base, raw."""
        if inner not in (CODEC_ZSTD, CODEC_RAW, CODEC_DELTA):
            raise CorruptSnapshot(f"chunk {address.hex()[:12]}: unknown codec {inner!r}")
        return self._decoder.decode(inner, data, size, address, self.address, base)

    def seal_manifest(self, data: bytes) -> bytes:
        """A serialised manifest as stored: sealed under the current key, if any."""
        key = self.keys.current
        if key is None:
            return data
        return (MANIFEST_MAGIC + bytes.fromhex(key.id)
                + key.seal(data, manifest_ad(self.session_id, key.id)))

    @staticmethod
    def open_manifest(session_id: str, stored: bytes, keys: KeySet) -> bytes:
        """The serialised manifest of a stored one (opened when sealed)."""
        key_id = key_id_of_manifest(stored)
        if key_id is None:
            return stored
        what = "manifest"
        key = keys.key(key_id, what)
        body = stored[len(MANIFEST_MAGIC) + _KEY_ID_BYTES :]
        return key.open(body, manifest_ad(session_id, key_id), what)


def session_address_key(addressing_secret: bytes, session_id: str) -> bytes:
    """The HMAC key of one session's addresses."""
    return hmac.digest(addressing_secret, b"session\0" + session_id.encode(), "sha256")


def fingerprint(secret: bytes) -> str:
    """A short public name for an addressing secret (stat caches record it)."""
    return hashlib.sha256(b"sessionkeeper fingerprint\0" + secret).hexdigest()[:16]
