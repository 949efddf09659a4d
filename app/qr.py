"""Showing a QR code to a person at a terminal."""

from __future__ import annotations

import sys

import segno


def print_terminal_qr(payload: str) -> bool:
    """Draw the QR code on stdout when it is a terminal; False when it is not."""
    if not sys.stdout.isatty():
        return False
    segno.make(payload, error="L").terminal(out=sys.stdout, compact=True)
    sys.stdout.flush()
    return True
