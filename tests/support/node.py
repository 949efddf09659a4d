"""Node.js packages from the npm registry for tests that drive real JavaScript libraries.

`npm_packages("whatsapp-web.js", "archiver")` installs once into
`.sessionkeeper/node/<hash of the specs>/` and returns that folder (it holds `node_modules`);
later calls, and other test processes, reuse it. A test skips where node or npm is missing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_CACHE = ROOT / ".sessionkeeper" / "node"
_DONE = ".sk-installed.json"


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        pytest.skip(f"node/npm not installed: {missing} not on PATH (apt-get install nodejs npm)")
    return node, npm


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for node and npm: no browser downloads (none can work here), no nags."""
    env = dict(os.environ)
    env.update(PUPPETEER_SKIP_DOWNLOAD="1", PUPPETEER_SKIP_CHROMIUM_DOWNLOAD="1",
               npm_config_update_notifier="false", npm_config_fund="false",
               npm_config_audit="false")
    env.update(extra or {})
    return env


def npm_packages(*specs: str, timeout: float = 900) -> Path:
    """The folder holding node_modules with these packages (npm specs), installed once."""
    if not specs:
        raise ValueError("name at least one package")
    _, npm = _tools()
    key = hashlib.sha256("\n".join(sorted(specs)).encode()).hexdigest()[:12]
    folder = NODE_CACHE / key
    done = folder / _DONE
    if done.is_file():
        return folder
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    # A second pytest process (xdist, another engineer's run) waits for the first install
    # instead of racing it inside the same node_modules.
    with open(NODE_CACHE / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # a half-done install of a killed run
        folder.mkdir()
        (folder / "package.json").write_text(json.dumps(
            {"name": f"sk-test-node-{key}", "private": True, "description": " ".join(specs)}))
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *specs],
            cwd=folder, env=node_env(), capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"npm install {' '.join(specs)} failed ({proc.returncode}):\n"
                                 f"{proc.stderr[-3000:]}")
        done.write_text(json.dumps(sorted(specs)))
    return folder


def run_node(script: str, cwd: Path, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a CommonJS script with `node -e` in cwd (its `require` resolves from cwd's
    node_modules: pass the folder npm_packages returned); AssertionError with its output
    when it fails."""
    node, _ = _tools()
    proc = subprocess.run([node, "-e", script], cwd=cwd, env=node_env(env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"node exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc
