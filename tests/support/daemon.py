"""Running the real daemon as a subprocess in tests: its log lines, HTTP and signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import leak_watch

ROOT = Path(__file__).resolve().parents[2]
# The session the `daemon_env` fixture (tests/conftest.py) runs.
DAEMON_SESSION = "e2e"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(text: str) -> Samples:
    """Every sample of a Prometheus exposition, keyed by name and sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def process_table() -> dict[int, tuple[int, list[bytes]]]:
    """pid -> (parent pid, command line) of every process, from /proc."""
    table: dict[int, tuple[int, list[bytes]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def descendants(root: int) -> list[int]:
    """Every process below root (Playwright starts Chromium in a process group of its own)."""
    table = process_table()
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


def browser_pids(root: int) -> list[int]:
    """Chromium's main process(es) below root (its helper processes carry --type=...)."""
    table = process_table()
    # Chromium's zygote children rewrite their command line into one space-joined string:
    # look for --type= in the whole of it, not only at the start of a NUL-separated word.
    return [pid for pid in descendants(root)
            if pid in table and (cmd := table[pid][1]) and b"chrom" in cmd[0]
            and b"crashpad" not in cmd[0] and b"--type=" not in b" ".join(cmd)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Daemon:
    """`python -m app run` with the demo target, its JSON log lines collected as they come."""

    def __init__(self, env: dict[str, str], *args: str,
                 command: list[str] | None = None, stderr_apart: bool = False) -> None:
        self.env = env
        self.port = int(env["PORT"])
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.stderr: list[str] = []  # with stderr_apart: its lines (else they are in raw)
        self.started = time.monotonic()
        # A session of its own: SIGKILL of the whole group takes Chromium down too.
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "app", *(args or ("run",))], env=env, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE if stderr_apart else subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if stderr_apart:
            threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line.rstrip("\n"))
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                event["_t"] = time.monotonic()
                self.events.append(event)

    def wait_for(self, name: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """The first event called name (with those fields) seen so far or within timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event.get("event") == name and all(event.get(k) == v
                                                       for k, v in fields.items()):
                    return event
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        raise AssertionError(f"no {name} {fields} within {timeout}s; log:\n" + self.log_text())

    def booted(self, timeout: float = 60) -> dict[str, Any]:
        """How the profile came to be at boot: `session_restored` from the database, or
        `local_profile_kept` (the profile on disk was at least as new); both name the
        generation and its login_state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if event.get("event") in ("session_restored", "local_profile_kept"):
                    return event
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        raise AssertionError(f"no restore within {timeout}s; log:\n" + self.log_text())

    def names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events]

    def log_text(self) -> str:
        stderr = ["stderr:", *self.stderr[-20:]] if self.stderr else []
        return "\n".join(self.raw[-60:] + stderr)

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get_json(self, path: str) -> Any:
        """GET a JSON path of the daemon's HTTP server (no token)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def metrics(self) -> Samples:
        """Every sample of /metrics (no token), keyed by name and sorted labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return metric_samples(r.read().decode())

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop_cleanly(self, timeout: float = 30) -> None:
        """SIGTERM, and the clean exit (code 0) that must follow."""
        self.signal(signal.SIGTERM)
        code = self.wait_exit(timeout)
        assert code == 0, f"exit code {code}:\n{self.log_text()}"

    def wait_exit(self, timeout: float = 40) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill_all(self) -> None:
        """SIGKILL the daemon and every process it started (Chromium, Playwright's driver)."""
        self.kill_tree(self.proc)
        self._reader.join(timeout=5)
        leak_watch.note_output(self.log_text(), f"a daemon of {leak_watch.current_test}")

    @staticmethod
    def kill_tree(proc: subprocess.Popen[str]) -> None:
        """SIGKILL a process started in a session of its own, and everything below it."""
        below = descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # Wait until Chromium is really gone: it must not write into a profile we delete.
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in below) and time.monotonic() < deadline:
            time.sleep(0.05)


def link_demo(demo_port: int, payload: str | None = None) -> dict[str, Any]:
    """The out-of-band 'phone scan': approve the QR payload the demo site shows (or the given
    one, as read off the status page; HTTPError 409 if the code rotated in between)."""
    body = json.dumps({"payload": payload} if payload is not None else {}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{demo_port}/api/link", data=body,
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


def login(daemon: Daemon, demo_port: int) -> None:
    """Approve the daemon's first QR code and wait for ready and the login checkpoint."""
    first = daemon.wait_for("qr_required", 60)
    assert first["qr_payload"]
    code, body = daemon.readyz()
    assert code == 503 and body["state"] == "qr_required" and body["qr_available"]
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/healthz", timeout=5) as r:
        assert r.status == 200 and json.loads(r.read()) == {"status": "alive"}
    assert link_demo(demo_port)["linked"]
    daemon.wait_for("ready", 30)
    daemon.wait_for("login_checkpoint", 30)
