"""Showing a QR code to a person: at a terminal, in a log line, as an image for the page."""

from __future__ import annotations

import io
import sys
from typing import Any, Literal


def print_terminal_qr(payload: str) -> bool:
    """Draw the QR code on stdout when it is a terminal; False when it is not."""
    if not sys.stdout.isatty():
        return False
    import segno  # noqa: PLC0415  (only once a code is shown, not at every boot)

    segno.make(payload, error="L").terminal(out=sys.stdout, compact=True)
    sys.stdout.flush()
    return True


def log_qr(log: Any, event: str, payload: str | None, enabled: bool) -> None:
    """One line per new QR code. Terminal art on a TTY; else the payload in a field. With
    logging of it switched off (SESSIONKEEPER_LOG_QR, off by default without a terminal) the
    payload stays out: whoever scans it links their account into this browser."""
    if not enabled or not payload:
        log.info(event, qr_logged=False)
        return
    if print_terminal_qr(payload):
        log.info(event, qr_logged="terminal")
    else:
        log.info(event, qr_logged="json", qr_payload=payload)


def render_qr(payload: str, kind: Literal["png", "svg"]) -> bytes:
    """The QR code as a standalone PNG or SVG document, large enough to scan from a screen."""
    import segno  # noqa: PLC0415

    buf = io.BytesIO()
    code = segno.make_qr(payload, error="m")
    if kind == "svg":
        code.save(buf, kind="svg", scale=8, border=4, xmldecl=False)
    else:
        code.save(buf, kind="png", scale=8, border=4)
    return buf.getvalue()
