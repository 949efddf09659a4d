"""Paths inside a manifest: relative, POSIX, no escape from the target directory."""

from __future__ import annotations

import re

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")


class UnsafePath(ValueError):
    """A manifest path that could escape the target or is not a plain relative path."""


def check_relative_path(path: str) -> str:
    """Return path unchanged if it is a safe relative POSIX path, else raise UnsafePath."""
    if not isinstance(path, str) or not path:
        raise UnsafePath("empty path")
    if path.startswith("/"):
        raise UnsafePath(f"absolute path {path!r}")
    if _FORBIDDEN.search(path):
        raise UnsafePath(f"control character or backslash in {path!r}")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePath(f"not valid UTF-8: {path!r}") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise UnsafePath("path too long")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePath(f"empty, '.' or '..' component in {path!r}")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UnsafePath(f"component too long in {path!r}")
    return path


def is_singleton(path: str) -> bool:
    """Chromium's per-host lock files (SingletonLock, SingletonSocket, SingletonCookie)."""
    return path.rsplit("/", 1)[-1].startswith("Singleton")
