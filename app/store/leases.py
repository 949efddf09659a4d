"""Leases: which process owns a session, until when (database clock), with which token.

A lease is acquired only when free, expired, or already ours; every acquisition increments the
fencing token. Renewal is fenced by owner and token, so a process can never extend a lease that
another has taken meanwhile. Times are `now()` in PostgreSQL, never the container's clock.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

from app.store import repo
from app.store.repo import Conn

FENCED_SQLSTATE = "SK001"

# A hand-over is counted only when the next owner takes the lease within this many times the
# shutdown timeout of the previous owner's SIGTERM (its final snapshot and release fit in one).
HANDOVER_WITHIN_SHUTDOWNS = 4.0
# Without a shutdown timeout at hand (claim mode): four times the default 25 s.
HANDOVER_WITHIN_DEFAULT_S = 100.0

# At an acquisition (the old row's values): the hand-over mark is kept only when the previous
# owner released the lease after setting it, and the mark is recent; otherwise it is cleared,
# so a later start logs no `handover_completed`.
_KEEP_HANDOVER = """CASE WHEN {t}owner IS NULL AND {t}handover_started_at IS NOT NULL
                       AND {t}lease_released_at >= {t}handover_started_at
                       AND now() - {t}handover_started_at <= make_interval(secs => {within})
                  THEN {t}handover_started_at END"""


# Host names repeat and, under tini, every container's daemon has the same pid: a random part
# keeps two processes apart (a lease is fenced by owner and token).
_PROCESS_PART = secrets.token_hex(3)


def owner_id() -> str:
    """This process's owner id: the platform's replica id (else the host name), the pid and a
    random part drawn once per process."""
    for var in ("RAILWAY_REPLICA_ID", "RENDER_INSTANCE_ID"):
        value = os.environ.get(var)
        if value:
            return f"{value}-{os.getpid()}-{_PROCESS_PART}"
    return f"{socket.gethostname()}-{os.getpid()}-{_PROCESS_PART}"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a session's lease now."""

    owner: str | None
    token: int
    expires_in_s: float | None


def handover_within(shutdown_timeout_s: float) -> float:
    """Seconds from the previous owner's SIGTERM within which taking its released lease counts
    as a hand-over."""
    return HANDOVER_WITHIN_SHUTDOWNS * shutdown_timeout_s


async def try_acquire(conn: Conn, session_id: str, owner: str, ttl_s: float,
                      handover_within_s: float = HANDOVER_WITHIN_DEFAULT_S) -> int | None:
    """Take the lease if it is free, expired or ours; returns the new fencing token. The
    hand-over mark survives only when this takes the lease the previous owner released at its
    shutdown, within handover_within_s of its SIGTERM; else it is cleared."""
    await repo.ensure_session(conn, session_id)
    token: int | None = await conn.fetchval(
        f"""UPDATE sessions
               SET owner = $2, lease_token = lease_token + 1,
                   lease_expires_at = now() + make_interval(secs => $3), updated_at = now(),
                   handover_started_at = {_KEEP_HANDOVER.format(t="", within="$4")}
             WHERE id = $1
               AND (owner IS NULL OR owner = $2 OR lease_expires_at < now())
         RETURNING lease_token""",
        session_id, owner, ttl_s, handover_within_s,
    )
    return token


async def renew(conn: Conn, session_id: str, owner: str, token: int, ttl_s: float) -> bool:
    """Extend our lease; False if another process holds it now (the token moved on)."""
    renewed: int | None = await conn.fetchval(
        """UPDATE sessions SET lease_expires_at = now() + make_interval(secs => $4)
            WHERE id = $1 AND owner = $2 AND lease_token = $3
        RETURNING 1""",
        session_id, owner, token, ttl_s,
    )
    return renewed is not None


async def mark_handover(conn: Conn, session_id: str, owner: str, token: int,
                        hold_s: float = 0.0) -> None:
    """Note the start of a hand-over (the owner got SIGTERM), for timing it, and hold the
    lease for hold_s seconds more: renewal has stopped, and a lease that ran out during the
    shutdown would let the next owner in and refuse the final snapshot as stale."""
    await conn.execute(
        """UPDATE sessions SET handover_started_at = now(),
                  lease_expires_at = greatest(lease_expires_at,
                                              now() + make_interval(secs => $4))
            WHERE id = $1 AND owner = $2 AND lease_token = $3""",
        session_id, owner, token, hold_s,
    )


async def clear_handover(conn: Conn, session_id: str, owner: str, token: int) -> None:
    """Forget the hand-over mark once its time has been logged."""
    await conn.execute(
        "UPDATE sessions SET handover_started_at = NULL "
        "WHERE id = $1 AND owner = $2 AND lease_token = $3",
        session_id, owner, token,
    )


async def release(conn: Conn, session_id: str, owner: str, token: int) -> bool:
    """Give the lease up (after the final snapshot); False if it was not ours any more."""
    released: int | None = await conn.fetchval(
        """UPDATE sessions SET owner = NULL, lease_expires_at = NULL, lease_released_at = now()
            WHERE id = $1 AND owner = $2 AND lease_token = $3
        RETURNING 1""",
        session_id, owner, token,
    )
    return released is not None


async def holder(conn: Conn, session_id: str) -> Holder:
    """The current holder of a session's lease (owner None when free)."""
    row = await conn.fetchrow(
        """SELECT owner, lease_token,
                  extract(epoch FROM lease_expires_at - now())::float8 AS expires_in
             FROM sessions WHERE id = $1""",
        session_id,
    )
    if row is None:
        return Holder(None, 0, None)
    expired = row["expires_in"] is None or row["expires_in"] < 0
    return Holder(None if expired else row["owner"], row["lease_token"],
                  None if expired else row["expires_in"])


async def handover_seconds(conn: Conn, session_id: str) -> float | None:
    """Seconds since the previous owner started handing over, on the database clock."""
    value: float | None = await conn.fetchval(
        "SELECT extract(epoch FROM now() - handover_started_at)::float8 FROM sessions "
        "WHERE id = $1",
        session_id,
    )
    return value


@dataclass(frozen=True, slots=True)
class Claim:
    """A registered session this process has just taken."""

    session_id: str
    token: int
    target: str | None


async def claim(conn: Conn, owner: str, ttl_s: float, limit: int,
                handover_within_s: float = HANDOVER_WITHIN_DEFAULT_S) -> list[Claim]:
    """Take up to `limit` registered sessions nobody owns (or whose owner's lease ran out);
    the hand-over mark as in try_acquire.

    FOR UPDATE SKIP LOCKED: replicas claiming at the same moment pass each other by instead
    of waiting, and no session is given to two of them.
    """
    if limit <= 0:
        return []
    rows = await conn.fetch(
        """WITH free AS (
               SELECT id FROM sessions
                WHERE registered AND (owner IS NULL OR lease_expires_at < now())
                ORDER BY id LIMIT $3
                  FOR UPDATE SKIP LOCKED)
           UPDATE sessions s
              SET owner = $1, lease_token = s.lease_token + 1,
                  lease_expires_at = now() + make_interval(secs => $2), updated_at = now(),
                  handover_started_at = """ + _KEEP_HANDOVER.format(t="s.", within="$4") + """
             FROM free WHERE s.id = free.id
        RETURNING s.id, s.lease_token, s.target""",
        owner, ttl_s, limit, handover_within_s,
    )
    return [Claim(r["id"], r["lease_token"], r["target"]) for r in rows]


async def is_registered(conn: Conn, session_id: str) -> bool:
    """True while the session is registered for claim mode."""
    found: bool | None = await conn.fetchval(
        "SELECT registered FROM sessions WHERE id = $1", session_id)
    return bool(found)


async def register(conn: Conn, session_id: str, target: str | None) -> None:
    """Register a session (or update its target) for replicas to claim."""
    await conn.execute(
        """INSERT INTO sessions (id, registered, target) VALUES ($1, true, $2)
           ON CONFLICT (id) DO UPDATE SET registered = true, target = EXCLUDED.target,
                                          updated_at = now()""",
        session_id, target,
    )


async def unregister(conn: Conn, session_id: str) -> bool:
    """Stop offering a session; its owner stops it and hands it back. False if unknown."""
    done: str = await conn.execute(
        "UPDATE sessions SET registered = false, updated_at = now() WHERE id = $1", session_id)
    return done != "UPDATE 0"
