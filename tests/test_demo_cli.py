"""`sessionkeeper demo link` and the terminal QR code."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from app.demo.server import DemoSite
from app.qr import print_terminal_qr
from tests.support.daemon import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.anyio
async def test_demo_link_approves_the_shown_code() -> None:
    port = free_port()
    site = DemoSite(port=port)
    await site.start()
    try:
        shown = site.current_payload
        env = {**os.environ, "SESSIONKEEPER_DEMO_PORT": str(port)}
        done = await anyio.run_process([sys.executable, "-m", "app", "demo", "link", "--json"],
                                       env=env, cwd=ROOT, check=False)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["linked"] and out["payload"] == shown
    finally:
        await site.stop()
    env = {**os.environ, "SESSIONKEEPER_DEMO_PORT": str(port)}
    failed = await anyio.run_process([sys.executable, "-m", "app", "demo", "link"], env=env,
                                     cwd=ROOT, check=False)
    lines = failed.stderr.decode().strip().splitlines()
    assert failed.returncode == 1 and len(lines) == 1 and "no demo site" in lines[0]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_qr_only_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stdout", plain)
    assert print_terminal_qr("2@payload") is False and plain.getvalue() == ""
    tty = _Tty()
    monkeypatch.setattr(sys, "stdout", tty)
    assert print_terminal_qr("2@payload") is True
    art = tty.getvalue()
    assert len(art.splitlines()) >= 8 and ("█" in art or "▀" in art or "\x1b[" in art)
