"""`sessionkeeper demo link` / `demo unlink` and the terminal QR code."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import aiohttp
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


async def _demo(port: int, *args: str) -> tuple[int, str, list[str]]:
    """`python -m app demo ARGS` against the demo site on port: exit code, stdout, stderr
    lines."""
    env = {**os.environ, "SESSIONKEEPER_DEMO_PORT": str(port)}
    done = await anyio.run_process([sys.executable, "-m", "app", "demo", *args], env=env,
                                   cwd=ROOT, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode().strip().splitlines()


@pytest.mark.anyio
async def test_demo_link_code_and_unlink() -> None:
    port = free_port()
    site = DemoSite(port=port)
    url = await site.start()
    try:
        pairing = site.request_pairing("+4915550001")
        typed = f"{pairing.code[:4]}-{pairing.code[4:]}".lower()
        code, out, err = await _demo(port, "link", "--code", typed, "--json")
        assert code == 0, err
        assert json.loads(out) == {"linked": True, "code": pairing.code}
        async with aiohttp.ClientSession(url) as http:
            async with http.get("/api/pairing", params={"ref": pairing.ref}) as r:
                linked = await r.json()
        assert linked["linked"] is True
        # A code links once; a refused code is one line on stderr.
        code, out, err = await _demo(port, "link", "--code", pairing.code)
        assert code == 1 and out == "" and len(err) == 1
        assert "refused the link" in err[0] and "not a current pairing code" in err[0]

        code, out, err = await _demo(port, "unlink", "--json")
        assert code == 0, err
        assert json.loads(out) == {"unlinked": [linked["device_id"]], "all": True}
        assert site.is_revoked(linked["device_id"])
        code, out, _ = await _demo(port, "unlink")  # the human form
        assert code == 0 and "unlinked: []" in out

        code, _, err = await _demo(port, "unlink", "--code", "ABCD1234")
        assert code == 1 and err == ["sessionkeeper: error: --code goes with `demo link`"]
    finally:
        await site.stop()
    for action in ("unlink", "link"):
        code, out, err = await _demo(port, action, *(["--code", "ABCD1234"] * (action == "link")))
        assert code == 1 and out == "" and len(err) == 1 and "no demo site" in err[0], err


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
