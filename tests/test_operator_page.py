"""The operator page locked down (issue 13 item 4): a QR code links whoever scans it into this
browser, so it is not shown, served or logged to just anyone.

The page tests run the real aiohttp application of app/http.py with a real StatusBoard (no
sessions: the page's own behaviour does not depend on them); the log tests run a real daemon
on the demo target with a real PostgreSQL and a real webhook receiver.
"""

from __future__ import annotations

import io
import json
import sys

import pytest

from app.log import configure_logging, get_logger
from app.qr import log_qr
from app.settings import load_settings


def test_log_qr_defaults_to_off_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIONKEEPER_LOG_QR", raising=False)

    class Pipe(io.StringIO):
        def isatty(self) -> bool:
            return False

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Pipe())
    assert load_settings().log_qr is False
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert load_settings().log_qr is True
    monkeypatch.setattr(sys, "stdout", Pipe())
    monkeypatch.setenv("SESSIONKEEPER_LOG_QR", "true")  # explicit true still logs it
    assert load_settings().log_qr is True
    monkeypatch.setenv("SESSIONKEEPER_LOG_QR", "false")
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert load_settings().log_qr is False

    # What the default means for a log line: no payload in JSON.
    monkeypatch.delenv("SESSIONKEEPER_LOG_QR")
    monkeypatch.setattr(sys, "stdout", Pipe())
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        log_qr(get_logger(session_id="s1"), "qr_required", "2@payload", load_settings().log_qr)
        log_qr(get_logger(session_id="s1"), "qr_rotated", "2@explicit",
               load_settings(log_qr="true").log_qr)
    finally:
        configure_logging("info", "json")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[0]["event"] == "qr_required" and "qr_payload" not in lines[0]
    assert lines[1]["qr_payload"] == "2@explicit"
