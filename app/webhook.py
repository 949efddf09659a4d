"""SESSIONKEEPER_WEBHOOK_URL: a JSON POST per event, sent from a queue of its own.

`send()` never waits: it puts the event on a bounded queue (dropping it, with a log line, when
the queue is full) and a single worker posts events in order, each with a timeout and a few
retries with backoff; after the last try it logs `webhook_failed`. A slow or dead receiver
therefore never holds up a session. A body is redacted like a log line (app/log.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from app.log import get_logger, redact, register_url

QUEUE_SIZE = 100
ATTEMPTS = 4


class WebhookRejected(Exception):
    """The receiver answered with a status other than 2xx."""


# What a try can fail with: retried, and logged as webhook_failed after the last try.
_RETRIED = (aiohttp.ClientError, TimeoutError, WebhookRejected)


class Webhook:
    """Posts events to one URL; start() it inside the event loop, stop() at shutdown."""

    def __init__(self, url: str, timeout: float, *, backoff: float = 1.0) -> None:
        self.url = url
        register_url(url)
        self.timeout = timeout
        self.backoff = backoff
        # The host only: a webhook URL often carries a secret in its path or query.
        self.host = urlsplit(url).netloc.rsplit("@", 1)[-1]
        self.log = get_logger(webhook_host=self.host)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Start the worker."""
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "sessionkeeper-webhook"})
        self._worker = asyncio.create_task(self._run(), name="webhook")

    async def stop(self, drain: float = 2.0) -> None:
        """Give queued events `drain` seconds to go out, then stop."""
        if self._worker is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if self._session is not None:
            await self._session.close()
        self._worker = None

    def send(self, event: dict[str, Any]) -> None:
        """Queue an event; returns at once (also when called from another thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._put(event)
        else:
            loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.log.warning("webhook_dropped", event_name=event.get("event"),
                             session_id=event.get("session_id"), queued=QUEUE_SIZE)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._deliver(event)
            except Exception as exc:  # the worker must outlive any one event
                self.log.error("webhook_failed", event_name=event.get("event"),
                               session_id=event.get("session_id"), reason=_reason(exc))
            finally:
                self._queue.task_done()

    async def _deliver(self, event: dict[str, Any]) -> None:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.log.info("webhook_retry", event_name=event.get("event"),
                          session_id=event.get("session_id"), attempt=state.attempt_number,
                          reason=_reason(exc), retry_in_s=round(state.upcoming_sleep, 1))

        try:
            async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(_RETRIED),
                    stop=stop_after_attempt(ATTEMPTS),
                    wait=wait_exponential(multiplier=self.backoff, max=30 * self.backoff),
                    before_sleep=before_sleep, reraise=True):
                with attempt:
                    await self._post(event)
        except _RETRIED as exc:
            self.log.warning("webhook_failed", event_name=event.get("event"),
                             session_id=event.get("session_id"), attempts=ATTEMPTS,
                             reason=_reason(exc))

    async def _post(self, event: dict[str, Any]) -> None:
        assert self._session is not None
        # A Path or datetime field becomes its text; a registered secret (the database
        # password, the HTTP token, this URL) quoted in a field is masked as in the log.
        body = json.dumps(redact(event), default=str)
        async with self._session.post(self.url, data=body,
                                      headers={"Content-Type": "application/json"}) as response:
            if not 200 <= response.status < 300:
                raise WebhookRejected(f"HTTP {response.status}")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    if isinstance(exc, TimeoutError):
        return "timed out"
    return (str(exc) or type(exc).__name__)[:300]
