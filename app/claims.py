"""Claim mode: a replica takes registered sessions nobody owns, up to SESSIONKEEPER_MAX_SESSIONS.

Each claimed session gets a runner of its own; a runner whose lease is lost or whose session is
removed ends, freeing a slot. Claims go one at a time (FOR UPDATE SKIP LOCKED in the database),
so replicas starting together share the sessions out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from app.failures import DB_ERRORS, retrying
from app.log import get_logger
from app.metrics import Metrics
from app.session import SessionRunner, keep_session
from app.session_ids import SESSION_ID_RULE, is_session_id
from app.settings import Settings
from app.store import leases
from app.store.db import open_pool

if TYPE_CHECKING:
    from app.webhook import Webhook  # aiohttp: loaded only when a webhook is set

# Makes a session's runner for its settings and target name (None: this replica's target);
# None when this replica cannot serve that target.
RunnerFactory = Callable[[Settings, str | None], SessionRunner | None]


class Claimer:
    """Claims sessions every POLL seconds while there are free slots."""

    POLL = 1.0

    def __init__(self, settings: Settings, make_runner: RunnerFactory,
                 runners: list[SessionRunner], metrics: Metrics,
                 webhook: Webhook | None) -> None:
        self.settings = settings
        self.make_runner = make_runner
        self.runners = runners  # shared with the supervisor: the live ones, for status/shutdown
        self.metrics = metrics
        self.webhook = webhook
        self.owner = leases.owner_id()
        self.log = get_logger()
        self.pool: asyncpg.Pool | None = None  # once connected; the status page reads it too

    async def run(self, stack: AsyncExitStack, tg: Any) -> None:
        """Claim every POLL seconds while there are free slots."""
        assert self.settings.max_sessions is not None
        pool: asyncpg.Pool | None = None
        async for attempt in retrying(self.log, "database_unavailable"):
            with attempt:
                pool = await stack.enter_async_context(
                    open_pool(self.settings, max_size=2 + 2 * self.settings.max_sessions))
        assert pool is not None
        self.pool = pool
        while True:
            free = self.settings.max_sessions - len(self.runners)
            try:
                sent = time.monotonic()
                async with pool.acquire() as conn:
                    # One at a time: replicas starting together share the sessions out.
                    claims = await leases.claim(
                        conn, self.owner, self.settings.lease_ttl, min(free, 1),
                        leases.handover_within(self.settings.shutdown_timeout))
            except DB_ERRORS as exc:
                self.log.warning("claim_failed", reason=str(exc)[:300])
                claims = []
            for claim in claims:
                if not is_session_id(claim.session_id):
                    # A row from before the CHECK constraint (or written around it): its id
                    # would name a path outside the profile folder, so it is never used as
                    # one. The lease is left to run out rather than released, so the next
                    # claim takes another session instead of this one again.
                    self.log.error("claim_skipped", claimed_session=repr(claim.session_id),
                                   reason=f"not a valid session id ({SESSION_ID_RULE})")
                    continue
                runner = self.make_runner(
                    self.settings.model_copy(update={
                        "session_id": claim.session_id,
                        "profile_dir": self.settings.profile_dir / claim.session_id}),
                    claim.target)
                if runner is None:
                    self.log.error("claim_skipped", claimed_session=claim.session_id,
                                   reason=f"this replica does not serve target {claim.target}")
                    async with pool.acquire() as conn:
                        await leases.release(conn, claim.session_id, self.owner, claim.token)
                    continue
                runner.owner, runner.claimed = self.owner, True
                runner.took_lease(claim.token, sent)
                runner.pool = pool  # one pool per replica; also lets shutdown release
                runner.log.info("session_claimed", fencing_token=claim.token)
                self.runners.append(runner)
                tg.start_soon(self._serve, runner, stack)
            await anyio.sleep(self.POLL)

    async def _serve(self, runner: SessionRunner, stack: AsyncExitStack) -> None:
        try:
            await keep_session(runner, stack, isolate=True, once=True)
        finally:
            if runner.lease_token is None and runner in self.runners:
                self.runners.remove(runner)
                await runner.driver.close()
