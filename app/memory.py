"""Keeping the process's memory near what it uses.

glibc gives every thread that allocates its own malloc arena (up to eight per core); memory
freed in one is seldom handed back, so a process whose worker threads read, hash and compress
chunks holds more than it uses, and more the bigger the profile. Two arenas, as
`MALLOC_ARENA_MAX=2` would set, keep the peak flat. Nothing changes where the C library is not
glibc, or where the operator set `MALLOC_ARENA_MAX` already.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (call before threads start); False where nothing changed."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas) == 1)
