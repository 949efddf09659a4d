"""The processes behind a Playwright Chromium, found in /proc: its driver and its browser.

Playwright's Python client talks to a Node.js driver (`node ... run-driver`, our child), which
starts Chromium in a process group of its own. Neither pid is in Playwright's public API, and a
stop must not depend on either answering: a driver that is gone leaves calls pending, and a
hung one never answers. So at each launch the browser's main process (the one whose command
line names the profile as --user-data-dir and is no helper) and its parent, our driver, are
noted here; a bounded stop can then tell whether the driver still runs and kill what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

DRIVER_MARK = b"run-driver"


@dataclass(frozen=True, slots=True)
class LaunchedPids:
    """Chromium's main process (also its process group) and the Playwright driver above it."""

    chromium: int
    driver: int | None


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    """True while pid runs (a zombie waiting to be reaped writes nothing: not alive)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def find_launched(profile: Path) -> LaunchedPids | None:
    """Chromium's main process on this profile and, when it is our child, its driver."""
    needle = f"--user-data-dir={profile}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        cmd = _cmdline(pid)
        if needle not in cmd or any(arg.startswith(b"--type=") for arg in cmd):
            continue
        fields = _stat(pid)
        if fields is None or fields[0] in ("Z", "X"):
            continue
        parent = int(fields[1])
        parent_fields = _stat(parent)
        ours = (parent_fields is not None and int(parent_fields[1]) == os.getpid()
                and any(DRIVER_MARK in arg for arg in _cmdline(parent)))
        return LaunchedPids(pid, parent if ours else None)
    return None


def browser_left(pids: LaunchedPids, profile: Path) -> bool:
    """True while a process of Chromium's group still runs on this profile."""
    needle = f"--user-data-dir={profile}".encode()
    return any(alive(pid) for pid in _group(pids.chromium)
               if any(arg.startswith(needle) for arg in _cmdline(pid)))


def _group(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None \
                and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def kill_browser(pids: LaunchedPids, profile: Path, wait_s: float) -> bool:
    """SIGKILL Chromium's process group (checked to be still on this profile, against pid
    reuse) and wait up to wait_s for it to be gone; True when nothing of it runs."""
    if not browser_left(pids, profile):
        return True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pids.chromium, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while browser_left(pids, profile):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_driver(pid: int) -> None:
    """SIGKILL our Playwright driver (checked to be still our child and a driver)."""
    fields = _stat(pid)
    if fields is None or int(fields[1]) != os.getpid():
        return
    if any(DRIVER_MARK in arg for arg in _cmdline(pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members
