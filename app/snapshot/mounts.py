"""Telling a mount point (a volume at the profile path) from a plain directory.

A mount point cannot be renamed (EBUSY) and its parent is another filesystem, so neither a
restore's swap by rename nor hard links from a staging folder beside it work there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_MOUNTINFO = Path("/proc/self/mountinfo")
_ESCAPED = re.compile(rb"\\([0-7]{3})")  # mountinfo writes space, tab, newline, \ as \ooo


def _mount_points() -> set[bytes]:
    try:
        text = _MOUNTINFO.read_bytes()
    except OSError:
        return set()
    points = set()
    for line in text.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4:
            points.add(_ESCAPED.sub(lambda m: bytes([int(m[1], 8)]), fields[4]))
    return points


def is_mount_point(path: Path) -> bool:
    """True when a filesystem is mounted at path, a bind mount of the same filesystem too
    (which os.path.ismount does not see: device and parent inode look like any directory's)."""
    if not path.is_dir() or path.is_symlink():
        return False
    if os.path.ismount(path):
        return True
    return os.fsencode(os.path.realpath(path)) in _mount_points()
