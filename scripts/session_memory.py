"""Measures the memory of one logged-in session (see scripts/session-memory): the daemon, its
Playwright driver and its Chromium, summed as RSS and as PSS. Results: results/session-memory/.

A daemon on the demo target logs in (the demo's phone approves the QR code), takes its login
checkpoint, then runs while the page writes messages; the whole process tree is sampled every
`--every` seconds for `--seconds`. The figure that matters for a plan is the peak PSS (what the
container's memory cgroup charges; RSS counts shared pages once per process and overstates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.process_memory import tree, tree_memory  # noqa: E402
from scripts.bench_vault import admin, server_url, with_db  # noqa: E402
from tests.support.daemon import Daemon, free_port  # noqa: E402

SESSION = "memory"
MB = 1024 * 1024


PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_PFN = (1 << 55) - 1


def _resident_frames(pid: int) -> set[int]:
    """The physical frames of pid's resident pages (0 for all without root)."""
    frames: set[int] = set()
    regions = []
    current: list[int] | None = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                current = [start, end]
            elif head == "Rss:" and current is not None and int(line.split()[1]) > 0:
                regions.append(current)
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for start, end in regions:
            pagemap.seek(start // PAGE * 8)
            data = pagemap.read((end - start) // PAGE * 8)
            for (entry,) in struct.iter_unpack("<Q", data):
                if entry & _PRESENT:
                    frames.add(entry & _PFN)
    return frames


def unique_resident_mb(pids: list[int]) -> float | None:
    """Resident memory of these processes with every shared page counted once; None without
    the rights to read physical frame numbers."""
    frames: set[int] = set()
    for pid in pids:
        try:
            frames |= _resident_frames(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except PermissionError:
            return None
    if frames == {0} or not frames:
        return None
    return round(len(frames) * PAGE / MB, 1)


def sample(daemon: Daemon) -> dict[str, Any]:
    """The daemon's tree (it and everything below: driver, Chromium) and, from /metrics, what
    the daemon says of itself and of its browser."""
    whole = tree_memory(daemon.proc.pid)
    own = daemon.metrics()
    browser_rss = next((v for (name, labels), v in own.items()
                        if name == "sessionkeeper_browser_resident_memory_bytes"), None)
    browser_pss = next((v for (name, labels), v in own.items()
                        if name == "sessionkeeper_browser_proportional_memory_bytes"), None)
    return {
        "t": round(time.monotonic() - daemon.started, 1),
        "tree_processes": whole.processes if whole else None,
        "tree_rss_mb": round(whole.rss_bytes / MB, 1) if whole else None,
        "tree_pss_mb": round(whole.pss_bytes / MB, 1) if whole and whole.pss_bytes else None,
        "tree_unique_mb": unique_resident_mb([p.pid for p in tree(daemon.proc.pid)]),
        "daemon_rss_mb": round(own[("process_resident_memory_bytes", ())] / MB, 1),
        "browser_rss_mb": round(browser_rss / MB, 1) if browser_rss else None,
        "browser_pss_mb": round(browser_pss / MB, 1) if browser_pss else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--every", type=float, default=2)
    parser.add_argument("--rate", type=float, default=30, help="demo messages per minute")
    parser.add_argument("--history-mb", type=float, default=0,
                        help="demo chat history written at login (profile size)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "session-memory")
    args = parser.parse_args()
    base = server_url()
    name = f"sk_mem_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(base, f'CREATE DATABASE "{name}"'))
    work = Path(tempfile.mkdtemp(prefix="sk-mem-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env.update(DATABASE_URL=with_db(base, name), PORT=str(free_port()),
               SESSIONKEEPER_TARGET="demo", SESSIONKEEPER_DEMO_PORT=str(free_port()),
               SESSIONKEEPER_SESSION_ID=SESSION, SESSIONKEEPER_PROFILE_DIR=str(work / "profile"),
               SESSIONKEEPER_DATA_DIR=str(work / "state"), SESSIONKEEPER_LOG_FORMAT="json",
               SESSIONKEEPER_DEMO_LINK_AFTER="1", SESSIONKEEPER_DEMO_MESSAGE_RATE=str(args.rate),
               SESSIONKEEPER_DEMO_HISTORY_MB=str(args.history_mb))
    samples: list[dict[str, Any]] = []
    daemon = Daemon(env)
    try:
        daemon.wait_for("login_checkpoint", 300)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            samples.append(sample(daemon))
            print(json.dumps(samples[-1]), file=sys.stderr)
            time.sleep(args.every)
        daemon.signal(signal.SIGTERM)
        daemon.wait_exit(60)
    finally:
        daemon.kill_all()
        shutil.rmtree(work, ignore_errors=True)
        asyncio.run(admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def peak(key: str) -> float | None:
        values = [s[key] for s in samples if s[key] is not None]
        return max(values) if values else None

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "seconds": args.seconds, "samples": len(samples),
        **{f"peak_{k}": peak(k) for k in ("tree_unique_mb", "tree_rss_mb", "tree_pss_mb",
                                           "daemon_rss_mb",
                                           "browser_rss_mb", "browser_pss_mb")},
        "last": samples[-1] if samples else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps({**result, "series": samples}, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
