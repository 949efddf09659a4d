"""A child's stderr as log lines: Playwright's Node.js driver writes its warnings to the
stderr it inherits, as plain text, which Railway shows as errors and no JSON parser reads.

Playwright's Python client gives the driver `sys.stderr.fileno()` when it starts it. While
`stderr_to_log()` is open, sys.stderr answers `fileno()` with the write end of a pipe (its
writes still go to the real stderr); a thread reads the other end and logs each line through
the standard library's logging (app/log.py renders it as a JSON `library_log` line with the
same context, e.g. `session_id`). The thread ends when the last writer, the driver, exits.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

MAX_LINE = 2000
_active: list[_FilenoOnly] = []
_base: list[TextIO] = []  # sys.stderr before the first open block


class _FilenoOnly:
    """sys.stderr, except that its file descriptor is the pipe's."""

    def __init__(self, real: TextIO, fd: int) -> None:
        self._real = real
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _pump(read_fd: int, logger: logging.Logger) -> None:
    with open(read_fd, encoding="utf-8", errors="replace") as pipe:
        for raw in pipe:
            line = raw.rstrip()
            if line:
                logger.warning("%s", line[:MAX_LINE])


@contextlib.contextmanager
def stderr_to_log(logger_name: str) -> Iterator[None]:
    """Children started inside this block write their stderr as log lines of logger_name."""
    read_fd, write_fd = os.pipe()
    context = contextvars.copy_context()  # the caller's session_id goes with the lines
    thread = threading.Thread(target=context.run, args=(_pump, read_fd,
                                                        logging.getLogger(logger_name)),
                              name=f"stderr:{logger_name}", daemon=True)
    thread.start()
    if not _active:
        _base[:] = [sys.stderr]
    proxy = _FilenoOnly(_base[0], write_fd)
    _active.append(proxy)
    sys.stderr = proxy
    try:
        yield
    finally:
        # Blocks of several sessions may overlap and close in any order.
        _active.remove(proxy)
        sys.stderr = _active[-1] if _active else _base[0]
        os.close(write_fd)  # the child holds its own copy; EOF comes when it exits
