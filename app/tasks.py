"""Task groups whose single failure comes out as itself, not wrapped in an ExceptionGroup."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from anyio.abc import TaskGroup

# What a pipeline's other side sees when one side failed: a consequence, not the cause.
_CONSEQUENCES = (anyio.BrokenResourceError, anyio.ClosedResourceError)


def sole_error(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member groups; exc itself otherwise. In a
    pipeline (a stream between two tasks), the side that finds the stream broken because the
    other side failed is left out: the other side's error is the one that counts."""
    while isinstance(exc, BaseExceptionGroup):
        causes = [e for e in exc.exceptions if not isinstance(e, _CONSEQUENCES)] \
            or list(exc.exceptions)
        if len(causes) != 1:
            return exc
        exc = causes[0]
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
