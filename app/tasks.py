"""Task groups whose single failure comes out as itself, not wrapped in an ExceptionGroup."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from anyio.abc import TaskGroup


def sole_error(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups; exc itself otherwise."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """anyio.create_task_group(), raising a lone failure (CorruptSnapshot, an OSError...)
    as itself, so callers catch it as they would without the group."""
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        error = sole_error(group)
        if error is group:
            raise
        raise error from None
