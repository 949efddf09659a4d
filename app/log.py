"""structlog set-up: one event per line, snake_case names with fields, secrets redacted.

JSON when not on a TTY (Railway and Render collect lines), console rendering on a TTY.
Every line carries the event name twice, as `event` and as `message` (Railway's log viewer
shows `message`, and its level column reads `level`). The standard library's logging (asyncpg,
aiohttp, asyncio, `warnings` via logging.captureWarnings) goes through structlog's
ProcessorFormatter to the same stream, as `library_log` lines whose `message` is the library's
text, so no plain-text line reaches stderr, which Railway shows as an error.
Any value that contains a registered secret (the database password, the HTTP token, the webhook
URL, a key) is masked, and so is the password part of any URL in a field. The CLI registers the
secrets of its settings as soon as they are read (app/cli.py) and masks its error lines too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import MutableMapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit


def _import_structlog_without_rich() -> ModuleType:
    """structlog looks for rich when it is imported (pretty tracebacks for its console
    renderer): a third of a second of every boot, for lines the daemon writes as JSON. rich is
    hidden while structlog loads (a None in sys.modules reads as "not installed"); tracebacks
    in console lines are then plain ones, and rich still loads for a progress bar."""
    hidden = "rich" not in sys.modules
    if hidden:
        sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: PLC0415
    finally:
        if hidden:
            del sys.modules["rich"]
    return structlog


if TYPE_CHECKING:
    import structlog
else:
    structlog = _import_structlog_without_rich()

_SECRETS: set[str] = set()
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_SECRET_KEYS = re.compile(r"(password|passwd|secret|token|key)$", re.IGNORECASE)
# user:password@ up to the last '@' of a URL's authority, as the user wrote it.
_WRITTEN_PASSWORD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:(?P<pw>.+)@[^@]*$")
MASK = "***"


def register_secret(value: str | None) -> None:
    """Never print this value (or any string containing it) in a log line."""
    if value and len(value) >= 3:
        _SECRETS.add(value)


def register_url(url: str | None) -> None:
    """Never print this URL, nor any form of the password in it: as parsed, as written up to
    the last '@' (a password with an unescaped '/' or '#' is cut short by a URL parser, and an
    error message may quote the cut-off part), percent-decoded, and a `password=` query
    parameter (libpq style)."""
    if not url:
        return
    register_secret(url)
    candidates: list[str | None] = []
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        candidates.append(parts.password)
        candidates += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    written = _WRITTEN_PASSWORD.match(url)
    if written:
        # Also the part before an unescaped '/', '#' or '?': what a parser took for a port.
        candidates += [written["pw"], re.split(r"[/#?]", written["pw"])[0]]
    for candidate in candidates:
        if candidate:
            register_secret(candidate)
            register_secret(unquote(candidate))


def redact(value: Any) -> Any:
    """Mask registered secrets and URL passwords inside strings, lists and dicts."""
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}:{MASK}@", value)
        for secret in sorted(_SECRETS, key=len, reverse=True):  # a longer one holds a shorter
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: MASK if _is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


# Names that look secret but are not: a fencing token is a counter, not a credential.
_NOT_SECRET = frozenset({"session_key", "fencing_token", "lease_token"})


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEYS.search(key)) and key not in _NOT_SECRET


def _redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = MASK if _is_secret_key(key) else redact(event_dict[key])
    return event_dict


class _NeverFails:
    """A log stream whose writes never raise: a reader that went away (a log shipper that
    died, a closed pipe) must not cost the final snapshot. After the first failure lines go
    nowhere, and the stream's file descriptor is pointed at /dev/null, so the flush at exit
    does not fail either."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._break()

    def isatty(self) -> bool:
        return not self.broken and self.stream.isatty()

    def _break(self) -> None:
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError):
            pass


def _message(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The event name as `message` too: what Railway's viewer shows (`event` stays, for
    readers that filter on it)."""
    event_dict["message"] = event_dict.get("event")
    return event_dict


LIBRARY_EVENT = "library_log"
_OURS = "_sessionkeeper_handler"


def _library_line(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A standard-library record: its text as `message`, `library_log` as the event name, the
    logger's name (asyncpg, aiohttp.server, py.warnings, ...) as `logger`."""
    record = event_dict.get("_record")
    event_dict["message"] = str(event_dict.get("event", ""))
    event_dict["event"] = LIBRARY_EVENT
    if isinstance(record, logging.LogRecord):
        event_dict["logger"] = record.name
    return event_dict


# Libraries whose info lines are their own steps, not news: pgserver logs initdb's and
# pg_ctl's command lines (`embedded_database` already says what runs). Warning and up only,
# everything at debug.
QUIET_LIBRARIES = ("pgserver",)


def configure_logging(
    level: str = "info",
    fmt: Literal["json", "console"] = "json",
    stream: TextIO | None = None,
) -> None:
    """Set up structlog once per process; the stream is stdout for the daemon, stderr for CLI.
    The standard library's root logger writes to the same stream, through the same
    redaction and renderer."""
    out: Any = _NeverFails(stream if stream is not None else sys.stdout)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            _redact_processor,
            _message,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        # One write per line (message and newline together), so a line of the standard
        # library's handler below never lands inside one of ours.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            _library_line,
            structlog.processors.format_exc_info,
            _redact_processor,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)  # ours from an earlier call; others' (pytest's) stay
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(threshold)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(
            threshold if threshold <= logging.DEBUG else max(threshold, logging.WARNING))
    logging.captureWarnings(True)
    threading.excepthook = _thread_exception


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception no thread caught: a JSON line (error, with the traceback), not Python's
    plain-text report on stderr."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    logging.getLogger("threading").error("uncaught exception in thread %s", name,
                                         exc_info=exc_info)


def bind_session(session_id: str) -> None:
    """Put session_id on every line logged from here on in this task (and the tasks it
    starts): the lines of shared code (migrations, the embedded database, libraries) that know
    no session then still say which one they belong to."""
    structlog.contextvars.bind_contextvars(session_id=session_id)


def get_logger(**fields: Any) -> Any:
    """A bound structlog logger; pass session_id and similar context as fields."""
    return structlog.get_logger().bind(**fields)
