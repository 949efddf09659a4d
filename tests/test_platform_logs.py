"""Log lines as Railway reads them: one JSON object per line with `message` and `level`, and
nothing on stderr that is not such a line (Railway shows stderr as errors).

Railway's rules, as its log viewer applies them: a line that parses as a JSON object is a
structured line; its message column is the `message` field (or `msg`), its level column the
`level` field; any other line is plain text, and a plain line on stderr is an error.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from app.child_stderr import stderr_to_log
from app.log import bind_session, configure_logging, get_logger
from tests.support.daemon import DAEMON_SESSION, Daemon, login

RAILWAY_LEVELS = {"debug", "info", "warn", "warning", "error"}


def railway_parse(line: str) -> dict[str, Any]:
    """A line as Railway's viewer takes it; AssertionError where it would show plain text or
    an empty message or level."""
    try:
        fields = json.loads(line)
    except ValueError:
        raise AssertionError(f"not JSON (Railway shows it as plain text): {line!r}") from None
    assert isinstance(fields, dict), line
    message = fields.get("message", fields.get("msg"))
    assert isinstance(message, str) and message, f"no message: {line!r}"
    assert fields.get("level") in RAILWAY_LEVELS, f"no level Railway knows: {line!r}"
    return fields


@pytest.fixture
def captured() -> Any:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    yield out
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_sessionkeeper_handler", False)]:
        root.removeHandler(handler)
    logging.captureWarnings(False)
    threading.excepthook = threading.__excepthook__


def test_our_events_carry_message_and_level(captured: io.StringIO) -> None:
    get_logger(session_id="s1").warning("lease_lost", holder="h")
    line = railway_parse(captured.getvalue().splitlines()[0])
    assert line["event"] == line["message"] == "lease_lost"
    assert line["level"] == "warning" and line["session_id"] == "s1"


def test_library_logging_and_warnings_become_json_lines(captured: io.StringIO) -> None:
    bind_session("s2")
    try:
        logging.getLogger("asyncpg.pool").warning("connection %s lost to %s", 3,
                                                  "postgresql://u:hunter22@db/x")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
        logging.getLogger("aiohttp.access").debug("below the level: not written")
    finally:
        import structlog

        structlog.contextvars.clear_contextvars()
    lines = [railway_parse(line) for line in captured.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["asyncpg.pool", "py.warnings", "aiohttp.server"]
    assert all(line["event"] == "library_log" and line["session_id"] == "s2" for line in lines)
    assert lines[0]["message"] == "connection 3 lost to postgresql://u:***@db/x"
    assert "hunter22" not in captured.getvalue()
    assert "DeprecationWarning: old API" in lines[1]["message"] and lines[1]["level"] == "warning"
    assert lines[2]["level"] == "error" and "ValueError: boom" in lines[2]["exception"]


def test_an_uncaught_thread_exception_is_a_json_line(captured: io.StringIO) -> None:
    def fail() -> None:
        raise RuntimeError("lost in a thread")

    thread = threading.Thread(target=fail, name="worker-7")
    thread.start()
    thread.join()
    (line,) = [railway_parse(x) for x in captured.getvalue().splitlines()]
    assert line["level"] == "error" and line["logger"] == "threading"
    assert line["message"] == "uncaught exception in thread worker-7"
    assert "RuntimeError: lost in a thread" in line["exception"]


def test_a_childs_stderr_becomes_json_lines(captured: io.StringIO) -> None:
    with stderr_to_log("playwright.driver"):
        child = subprocess.Popen([sys.executable, "-c",
                                  "import sys; sys.stderr.write('driver says hi\\nand bye\\n')"],
                                 stderr=sys.stderr.fileno())
    assert child.wait(10) == 0
    deadline = time.monotonic() + 5
    while captured.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = [railway_parse(line) for line in captured.getvalue().splitlines()]
    assert [(x["logger"], x["message"]) for x in lines] == [
        ("playwright.driver", "driver says hi"), ("playwright.driver", "and bye")]


def test_a_real_daemon_writes_only_railway_lines(daemon_env: dict[str, str],
                                                 empty_database_url: str,
                                                 tmp_path: Path) -> None:
    """A daemon on an empty database (so it migrates), logged in, snapshotting and stopped:
    every stdout line is a JSON line with message, level and the session; stderr is empty.
    Playwright's driver is made to talk (DEBUG=pw:browser) and Python to warn."""
    env = {**daemon_env, "DATABASE_URL": empty_database_url, "DEBUG": "pw:browser",
           "PYTHONWARNINGS": "default"}
    daemon = Daemon(env, stderr_apart=True)
    try:
        daemon.wait_for("migration_applied", 60)
        login(daemon, int(env["SESSIONKEEPER_DEMO_PORT"]))
        daemon.wait_for("snapshot_committed", 30, kind="login")
        daemon.stop_cleanly()
    finally:
        daemon.kill_all()
    assert daemon.stderr == [], "plain text on stderr:\n" + "\n".join(daemon.stderr[:20])
    lines = [railway_parse(line) for line in daemon.raw]
    assert len(lines) > 20
    missing = [line for line in lines if line.get("session_id") != DAEMON_SESSION]
    assert not missing, f"lines without session_id: {missing[:5]}"
    names = {line["event"] for line in lines}
    assert {"migration_applied", "daemon_started", "ready", "shutdown_completed"} <= names
    assert any(line.get("logger") == "playwright.driver" for line in lines), \
        "the driver's DEBUG output did not come through as JSON lines"
    for line in lines:
        if line["event"] != "library_log":
            assert line["message"] == line["event"]
    committed = next(line for line in lines if line["event"] == "snapshot_committed")
    assert committed["bytes_raw"] == committed["raw_bytes"] > 0
