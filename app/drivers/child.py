"""`exec`: a child process (a bot with a Chromium of its own) holds the profile.

The child runs in a process group of its own, so a Ctrl-C at a terminal reaches it once,
through us, rather than twice. A stop signal is passed on to the child alone (it closes its
own browser); whatever is left of its group once it has exited (a Chromium it did not close)
gets SIGTERM, then SIGKILL after a bounded wait, so nothing writes into the profile while the
final snapshot is taken. No page can be read: the login state comes from the target's login
key in a staged copy of the profile's localStorage, peeked at every few seconds; a key that
was there and is gone is a logout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
from anyio.abc import Process

from app.browser import DevTools
from app.browser_processes import group_members
from app.drivers.base import SessionHost
from app.login_state import LoginState, Observation
from app.snapshot.local_storage import LoginKey
from app.snapshot.staging import work_dir_for

PEEK_EVERY = 5.0
# How long a child's stray processes (its Chromium) get to exit after SIGTERM, and a child
# that lost its lease gets before SIGKILL.
STRAGGLER_WAIT_S = 3.0
ABANDON_WAIT_S = 5.0


def exit_code_of(returncode: int) -> int:
    """A shell's exit code: the child's own, or 128+N when signal N ended it."""
    return returncode if returncode >= 0 else 128 - returncode


class ChildDriver:
    """Runs CMD on the restored profile and waits for it."""

    name = "exec"

    def __init__(self, command: Sequence[str], env: Mapping[str, str], profile: Path,
                 login_key: LoginKey | None) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.profile = profile
        self.login_key = login_key
        self.ran = False
        self.proc: Process | None = None
        self.exit_code: int | None = None
        self._host: SessionHost | None = None

    @property
    def reads_page(self) -> bool:
        """No page: the login state is read from the profile."""
        return False

    @property
    def devtools(self) -> DevTools | None:
        """The child's browser is its own: nothing to attach to here."""
        return None

    async def prepare(self) -> None:
        """Nothing to prepare."""

    async def run(self, host: SessionHost) -> int | None:
        """Start the child and wait for it; its exit code once it ends by itself."""
        try:
            self.proc = await anyio.open_process(
                self.command, stdin=None, stdout=None, stderr=None, env=self.env,
                start_new_session=True)
        except OSError as exc:
            host.log.error("child_failed_to_start", command=self.command[0],
                           reason=exc.strerror or str(exc))
            self.exit_code = 127 if isinstance(exc, FileNotFoundError) else 126
            return self.exit_code
        self.ran = True
        self._host = host
        host.log.info("child_started", pid=self.proc.pid, command=self.command[0],
                      since_start_ms=host.since_start_ms())
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_login, host)
            returncode = await self.proc.wait()
            tg.cancel_scope.cancel()
        code = await self._ended(returncode, by="itself")
        host.reset_login()
        return code

    async def _ended(self, returncode: int, by: str) -> int:
        """Note the exit and stop what is left of the child's group."""
        self.exit_code = exit_code_of(returncode)
        fields = {"signal": signal.Signals(-returncode).name} if returncode < 0 else {}
        if self._host is not None:
            self._host.log.info("child_exited", code=self.exit_code, by=by, **fields)
        await self._reap_group(STRAGGLER_WAIT_S)
        return self.exit_code

    async def _watch_login(self, host: SessionHost) -> None:
        """The login state from the profile's localStorage, every PEEK_EVERY seconds."""
        if self.login_key is None:
            # Nothing to tell a login by: the session counts as ready while the child runs.
            await host.on_observation(Observation(LoginState.READY))
            return
        work = work_dir_for(self.profile)
        logged_in = False
        while True:
            label = await anyio.to_thread.run_sync(self.login_key.peek, self.profile, work)
            if label == "ready":
                logged_in = True
                # The key is written once the login is complete: no settle delay needed.
                await host.on_observation(Observation(LoginState.READY, synced=True))
            elif label == "qr":
                # The key was there and is gone: the site cleared it at a logout (WhatsApp does
                # when the phone unlinks the device, or the bot logs out).
                await host.on_observation(
                    Observation(LoginState.LOGGED_OUT, logout=True) if logged_in
                    else Observation(LoginState.QR_REQUIRED))
                logged_in = False
            await anyio.sleep(PEEK_EVERY)

    async def act(self, action: str, arg: str | None = None) -> str | None:
        """The child's browser is its own: nothing is done in it."""
        return None

    async def pause(self) -> None:
        """A live capture is safe (staged and validated): the child keeps running."""

    async def resume(self, host: SessionHost) -> None:
        """Nothing was stopped."""

    async def stop(self, signal_name: str | None, within: float) -> None:
        """Pass the stop signal on to the child and wait up to `within` seconds for it to
        exit; then SIGKILL its whole group."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return  # never started, or it ended by itself (and was reaped then)
        sig = signal.Signals[signal_name] if signal_name else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        by = sig.name
        with anyio.move_on_after(max(within, 0.0)):
            await proc.wait()
        if proc.returncode is None:
            by = "SIGKILL after the stop timeout"
            self._kill_group(signal.SIGKILL)
        await self._ended(await proc.wait(), by=by)

    async def abandon(self) -> None:
        """Lease lost: SIGTERM the child, SIGKILL its group if it lingers."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        with anyio.move_on_after(ABANDON_WAIT_S):
            await proc.wait()
        self._kill_group(signal.SIGKILL)
        await proc.wait()

    async def close(self) -> None:
        """Make sure nothing of the child's group is left."""
        await self._reap_group(0.0)

    def kill_now(self) -> None:
        """SIGKILL the child's whole group at once (a second stop signal)."""
        self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: signal.Signals) -> bool:
        """Signal the child's process group; False when nothing of it is left."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    async def _reap_group(self, wait_s: float) -> None:
        """Stop what is left of the child's group: SIGTERM, a bounded wait, SIGKILL."""
        if not self._alive() or not self._kill_group(signal.SIGTERM):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            await anyio.sleep(0.05)
            if not self._alive():
                return
        self._kill_group(signal.SIGKILL)

    def _alive(self) -> bool:
        """True while a process of the child's group runs (zombies waiting for their parent
        to reap them do not count: they write nothing)."""
        if self.proc is None:
            return False
        return any(True for _ in group_members(self.proc.pid))
