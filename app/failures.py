"""Telling a database outage from a local failure, retrying the first, and naming either.

A database away (refused, reset, timed out, a half-open socket) is retried with backoff and
shows as `degraded`; a local failure (a full disk, a missing folder) is an error in its own
right and is reported as such, never as `database_unavailable`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import asyncpg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from app.errors import DatabaseUnavailable

# What a database outage looks like from asyncpg: retried with backoff, never fatal. A plain
# OSError counts only when it names no file and no local errno (see is_database_error): a
# full disk or a missing folder is no outage, and is reported for what it is.
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, DatabaseUnavailable,
             TimeoutError, asyncio.TimeoutError)
# Errors of the local machine that come without a file name (a write to a full disk):
# asyncpg's socket errors carry no file name either, whatever their errno (ENOENT for a
# missing unix socket), while a file operation of our own names its file.
_LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE,
                           errno.EROFS, errno.EIO, errno.ENOMEM})


def is_database_error(exc: BaseException) -> bool:
    """True for an error of the database or the network to it (retried, `degraded`); False
    for a local one (a full disk, a missing folder), which is an error in its own right."""
    if isinstance(exc, ConnectionError | socket.gaierror | TimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, OSError):
        return exc.filename is None and exc.errno not in _LOCAL_ERRNOS
    return isinstance(exc, DB_ERRORS)


def reason_of(exc: BaseException) -> str:
    """An error as one short line for a log field (its type when it has no message)."""
    exc = innermost(exc)
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def innermost(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups: what actually went wrong."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def retrying(log: Any, event: str, max_wait: float = 60.0) -> AsyncRetrying:
    """Retry database errors with exponential backoff, logging each retry as `event`."""
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(event, attempt=state.attempt_number,
                    reason=reason_of(exc) if exc else None,
                    retry_in_s=round(state.upcoming_sleep, 1))

    return AsyncRetrying(retry=retry_if_exception(is_database_error),
                         wait=wait_exponential(multiplier=1, min=1, max=max_wait),
                         before_sleep=before_sleep, reraise=True)
