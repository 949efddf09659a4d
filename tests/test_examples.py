"""The examples a user copies: they parse, and their pieces agree with each other."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.support.daemon import ROOT

BOT = ROOT / "examples" / "whatsapp-web.js"


def test_whatsapp_bot_example_is_consistent() -> None:
    package = json.loads((BOT / "package.json").read_text())
    assert "whatsapp-web.js" in package["dependencies"] and package["main"] == "index.js"
    dockerfile = (BOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and json.loads(cmd[1]) == ["sessionkeeper", "exec", "--", "node", "index.js"]
    # LocalAuth keeps its profile in <dataPath>/session: the folder exec restores into.
    profile = re.search(r"SESSIONKEEPER_PROFILE_DIR=(\S+)", dockerfile)
    assert profile and profile[1].endswith("/session")
    index = (BOT / "index.js").read_text()
    assert "new LocalAuth" in index and "SESSIONKEEPER_PROFILE_DIR" in index
    assert "client.destroy()" in index  # closes its browser on SIGTERM before exiting


def test_whatsapp_bot_example_parses() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed: cannot check the example's syntax")
    checked = subprocess.run([node, "--check", str(BOT / "index.js")], capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
