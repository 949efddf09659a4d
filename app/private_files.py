"""Files and folders only their owner may read: a profile, its staged copies, the caches and
markers beside it hold a logged-in device's keys and cookies.

The CLI also sets the process umask to 077 (app/cli.py), which covers what Chromium and the
libraries write; these helpers make the modes explicit where we create files ourselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """mkdir -p, the last folder 0700 (parents get the umask's default)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def write_private_text(path: Path, text: str | Iterable[str]) -> None:
    """Write a new file (or replace a stale one) that only the owner can read; `text` may
    come in pieces (a big document written as it is made)."""
    path.unlink(missing_ok=True)  # a leftover keeps its old mode through O_TRUNC
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.writelines([text] if isinstance(text, str) else text)


def owner_only(mode: int, *, directory: bool) -> int:
    """The mode a snapshot records and a restore gives: 0700 for a folder; for a file 0600
    plus the owner's exec bit. Recording it clamped keeps a restored profile's next snapshot
    equal to the generation it came from."""
    return DIR_MODE if directory else (mode & 0o700) | FILE_MODE
