"""Progress of long operations: a bar on a TTY, nothing otherwise."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress


class ProgressSink(Protocol):
    """Receives byte counts of a long operation."""

    def start(self, label: str, total: int) -> None:
        """A phase begins with a known total of bytes."""

    def advance(self, amount: int) -> None:
        """amount more bytes are done."""


class NullProgress:
    """Reports nothing (not a TTY, or --json)."""

    def start(self, label: str, total: int) -> None:
        """Ignore."""

    def advance(self, amount: int) -> None:
        """Ignore."""


class BarProgress:
    """A rich progress bar on stderr."""

    def __init__(self) -> None:
        # rich only where a bar is drawn: the restore imports this module at every boot.
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress: Progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._task: int | None = None

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def start(self, label: str, total: int) -> None:
        """Begin a new bar."""
        if self._task is not None:
            self._progress.remove_task(self._task)  # type: ignore[arg-type]
        self._task = self._progress.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        """Move the bar."""
        if self._task is not None:
            self._progress.advance(self._task, amount)  # type: ignore[arg-type]


def wants_bar(json_output: bool) -> bool:
    """A bar only for people: stderr is a TTY and the output is not JSON."""
    return sys.stderr.isatty() and not json_output
