"""The `sessionkeeper` command (and `python -m app`): for `run`, Playwright's driver is spawned
before anything else is imported (app/early_driver.py); every command then goes to app/cli.py.

Only the standard library and Playwright load before the driver's spawn: what the daemon's
boot waits for comes up alongside its imports.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

# Words that end the command before it runs: no driver for them.
NOT_RUNNING = frozenset({"-h", "--help", "--version"})


def runs_daemon(argv: Sequence[str]) -> bool:
    """True when argv is `run` (options before or after it), not its help."""
    words = [w for w in argv if not w.startswith("-")]
    return bool(words) and words[0] == "run" and not NOT_RUNNING & set(argv)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run one command and exit with its status."""
    args = list(sys.argv[1:] if argv is None else argv)
    early = None
    if runs_daemon(args):
        from app import early_driver  # noqa: PLC0415

        early = early_driver.begin()
    from app.cli import main as cli_main  # noqa: PLC0415

    try:
        cli_main(args, early)
    finally:
        if early is not None:
            early.close()
