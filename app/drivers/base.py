"""The contract between a session's lifecycle (app/session.py) and its driver."""

from __future__ import annotations

from typing import Protocol

from app.browser import DevTools
from app.events import EventLog
from app.login_state import LoginState, Observation
from app.snapshot.local_storage import LoginKey


class SessionHost(Protocol):
    """What a driver may use of the session it runs for."""

    log: EventLog

    @property
    def state(self) -> LoginState:
        """The login state last seen."""
        ...

    async def on_observation(self, seen: Observation) -> None:
        """A reading of the login state (the lifecycle logs changes and checkpoints a login)."""

    def reset_login(self) -> None:
        """What holds the profile went away: the login state is unknown again."""

    def page_changed(self) -> None:
        """The login is read through another page now (it loads before it tells)."""

    def since_start_ms(self) -> int:
        """Milliseconds since the process started."""
        ...


class Driver(Protocol):
    """Starts, watches and stops what holds the profile; nothing else."""

    name: str
    # True once it has started: then a final snapshot has something to capture.
    ran: bool
    # The login key read from each staged copy when no page tells the login state (exec);
    # None with a page to read (run), or when the target names no key.
    login_key: LoginKey | None

    @property
    def reads_page(self) -> bool:
        """True when the login state comes from a page (snapshots are labelled by it)."""
        ...

    @property
    def devtools(self) -> DevTools | None:
        """Our Chromium's DevTools endpoint while it runs with CDP on; else None."""
        ...

    async def prepare(self) -> None:
        """Get ready to start, alongside the restore (Playwright's driver)."""

    async def run(self, host: SessionHost) -> int | None:
        """Start, watch, restart after a crash; returns the exit code when what it runs ended
        by itself (a child), and runs until cancelled otherwise."""
        ...

    async def act(self, action: str, arg: str | None = None) -> str | None:
        """Do something in our own page (refresh a QR code, take over, reload, ask for a
        pairing code); None when there is no page of ours to do it in."""
        ...

    async def pause(self) -> None:
        """Make everything reach the disk for a login checkpoint (our Chromium closes)."""

    async def resume(self, host: SessionHost) -> None:
        """Carry on after a checkpoint."""

    async def stop(self, signal_name: str | None, within: float) -> None:
        """Stop before the final snapshot (a child gets the signal and `within` seconds)."""

    async def abandon(self) -> None:
        """The lease is lost: stop at once; nothing will be written."""

    async def close(self) -> None:
        """Release what is left (Playwright's driver, a child's stray processes)."""
