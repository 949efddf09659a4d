"""The facts about each session that /readyz, the status page, /api/sessions and /metrics show.

A session this process runs reports its own facts; in claim mode the board adds every other
session registered in the database, with the owner holding its lease (or none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import asyncpg

from app.log import get_logger
from app.store import repo

# The states a session can show; `degraded` means the database is away while the browser runs.
STATES = ("starting", "waiting_for_lease", "restoring", "connecting", "qr_required", "ready",
          "logged_out", "conflict", "unknown", "degraded")


@dataclass(frozen=True, slots=True)
class SnapshotFacts:
    """The newest committed generation of a session."""

    generation: int
    at: str
    kind: str
    login_state: str | None
    files: int
    bytes_raw: int
    bytes_stored: int
    bytes_uploaded: int
    duration_ms: int

    @classmethod
    def of(cls, info: repo.GenerationInfo) -> SnapshotFacts:
        """From a generation row."""
        return cls(info.generation, info.created_at.isoformat(), info.kind, info.login_state,
                   info.files, info.bytes_raw, info.bytes_stored, info.bytes_uploaded,
                   info.duration_ms)


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """One session as the operator sees it. `state` is None for a session this process does
    not run (claim mode): only the database's view (owner, newest generation) is known."""

    session_id: str
    state: str | None
    run_here: bool
    ready: bool
    degraded: bool
    qr_available: bool
    pairing_code_available: bool
    # Bumped on every new QR code: the page reloads the image when it changes.
    qr_serial: int
    lease_holder: str | None
    lease_held: bool
    fencing_token: int | None
    last_snapshot: SnapshotFacts | None
    generations_kept: int | None

    def as_json(self) -> dict[str, Any]:
        """Plain fields for JSON."""
        return asdict(self)


class SessionView(Protocol):
    """What the board needs from a session runner."""

    session_id: str

    @property
    def qr_payload(self) -> str | None:
        """The QR code shown now, if any."""
        ...

    @property
    def pairing_code(self) -> str | None:
        """The pairing code shown now, if any."""
        ...

    def facts(self) -> SessionFacts:
        """The session's current facts."""
        ...


class StatusBoard:
    """Every session of this process (and, in claim mode, of the database) in one place."""

    def __init__(self, sessions: Sequence[SessionView], owner: str, claim_mode: bool,
                 pool: Callable[[], asyncpg.Pool | None]) -> None:
        self.sessions = sessions  # shared with the supervisor: claim mode adds and removes
        self.owner = owner
        self.claim_mode = claim_mode
        self._pool = pool
        self.log = get_logger()

    def local(self) -> list[SessionFacts]:
        """The sessions this process runs."""
        return [s.facts() for s in list(self.sessions)]

    def qr_payload(self, session_id: str) -> str | None:
        """The QR code a session of this process shows now, if any."""
        session = self._local(session_id)
        return session.qr_payload if session else None

    def pairing_code(self, session_id: str) -> str | None:
        """The pairing code a session of this process shows now, if any."""
        session = self._local(session_id)
        return session.pairing_code if session else None

    def _local(self, session_id: str) -> SessionView | None:
        return next((s for s in list(self.sessions) if s.session_id == session_id), None)

    async def overview(self) -> dict[str, Any]:
        """What /api/sessions returns (and the page shows)."""
        facts = self.local()
        database_error: str | None = None
        if self.claim_mode:
            try:
                facts += await self._elsewhere({f.session_id for f in facts})
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                database_error = str(exc)[:300]
                self.log.warning("status_database_unavailable", reason=database_error)
        facts.sort(key=lambda f: f.session_id)
        return {"owner": self.owner, "claim_mode": self.claim_mode,
                "ready": bool(facts) and all(f.ready for f in facts if f.run_here),
                "database_error": database_error,
                "sessions": [f.as_json() for f in facts]}

    async def _elsewhere(self, here: set[str]) -> list[SessionFacts]:
        pool = self._pool()
        if pool is None:
            return []
        async with pool.acquire() as conn:
            rows = await repo.registered_sessions(conn)
        return [
            SessionFacts(
                session_id=row.session_id, state=None, run_here=False, ready=False,
                degraded=False, qr_available=False, pairing_code_available=False, qr_serial=0,
                lease_holder=row.holder, lease_held=False, fencing_token=None,
                last_snapshot=SnapshotFacts.of(row.latest) if row.latest else None,
                generations_kept=row.generations)
            for row in rows if row.session_id not in here
        ]
