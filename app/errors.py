"""Errors a user can cause; the CLI turns them into one line and an exit code, never a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad input, bad setting, unreachable database)."""

    exit_code = 1


class ConfigError(UserError):
    """An invalid setting or command-line value."""

    exit_code = 2


class DatabaseUnavailable(UserError):
    """The database could not be reached."""


class NotFound(UserError):
    """A session or generation that does not exist."""


class CorruptSnapshot(UserError):
    """Stored data failed a check (digest, manifest, unsafe path)."""


class CaptureInvalid(UserError):
    """A staged copy of a live profile stayed inconsistent after every retry."""


class LeaseLost(UserError):
    """Another process owns the session now: this one must stop without writing."""


class LeaseHeld(UserError):
    """A write outside any lease (the CLI's snapshot, import, prune, delete) while a process
    holds the session's lease: refused unless forced."""


class SessionRemoved(Exception):
    """The session was unregistered (claim mode): stop it, take a final snapshot, hand it back."""


class RestoreRejected(Exception):
    """A restored logged-in generation came up asking for a QR code: the session restores the
    previous logged-in generation instead (self-healing restore)."""

    def __init__(self, generation: int) -> None:
        super().__init__(f"generation {generation} came up asking for a QR code")
        self.generation = generation
