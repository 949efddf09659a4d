"""A session's log: every line also counts (warnings and errors, by event name, in
sessionkeeper_errors_total) and the events an operator is told about also go to the webhook.

So the webhook's events are exactly log lines: `state_changed` on every state change,
`snapshot_failed` / `final_snapshot_failed` when a snapshot does not make it, and
`browser_restarted` when Chromium relaunched (clients attached through /cdp must reconnect).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.metrics import Metrics

if TYPE_CHECKING:
    from app.webhook import Webhook  # aiohttp: loaded only when a webhook is set

WEBHOOK_EVENTS = frozenset({"state_changed", "snapshot_failed", "final_snapshot_failed",
                            # DevTools clients attached through /cdp must reconnect.
                            "browser_restarted"})
# Never sent out of the process: the QR payload logs in as the session while it lasts.
_PRIVATE_FIELDS = frozenset({"qr_payload"})


class EventLog:
    """Wraps a bound structlog logger of one session."""

    def __init__(self, log: Any, session_id: str, owner: str, metrics: Metrics,
                 webhook: Webhook | None) -> None:
        self._log = log
        self.session_id = session_id
        self.owner = owner
        self.metrics = metrics
        self.webhook = webhook

    def bind(self, **fields: Any) -> EventLog:
        """The same log with more context fields."""
        return EventLog(self._log.bind(**fields), self.session_id, self.owner, self.metrics,
                        self.webhook)

    def debug(self, event: str, **fields: Any) -> None:
        """A debug line."""
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """An info line."""
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """A warning line, counted (even when the log level hides it)."""
        self.metrics.error(event)
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        """An error line, counted (even when the log level hides it)."""
        self.metrics.error(event)
        self._emit("error", event, fields)

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        getattr(self._log, level)(event, **fields)
        if self.webhook is not None and event in WEBHOOK_EVENTS:
            body = {k: v for k, v in fields.items() if k not in _PRIVATE_FIELDS}
            self.webhook.send({"event": event, "session_id": self.session_id, "level": level,
                               "owner": self.owner,
                               "timestamp": datetime.now(UTC).isoformat(), **body})
