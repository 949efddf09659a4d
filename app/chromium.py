"""Finding a Chromium to drive, and the flags it runs with.

Order: SESSIONKEEPER_CHROMIUM_PATH, else Playwright's own installed Chromium, else a system
`chromium`, `chromium-browser` or `google-chrome`. None found is a setup error (exit 2).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from app.child_env import browser_env
from app.errors import ConfigError

SYSTEM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Debian's /usr/bin/chromium is a shell wrapper; the real binary sits here and also works.
DEBIAN_BINARY = Path("/usr/lib/chromium/chromium")

# Without these Chromium phones home at every start (component updates, sync, field trials);
# in a container with a closed or metered network that is noise at best.
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    # navigator.webdriver stays false, as in a browser a person uses.
    "--disable-blink-features=AutomationControlled",
]


class ChromiumNotFound(ConfigError):
    """No usable Chromium."""


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _playwright_chromium() -> Path | None:
    """Playwright's own Chromium, if `playwright install chromium` put one here."""
    root = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or Path.home() / ".cache/ms-playwright")
    if not root.is_dir():
        return None
    candidates = sorted(root.glob("chromium-*/chrome-linux*/chrome"), reverse=True)
    for pattern in ("chromium_headless_shell-*/chrome-*/chrome-headless-shell",
                    "chromium_headless_shell-*/chrome-linux*/headless_shell"):
        candidates += sorted(root.glob(pattern), reverse=True)
    return next((c for c in candidates if _executable(c)), None)


def find_chromium(configured: Path | None = None) -> Path:
    """The Chromium to launch; ChromiumNotFound with one clear line when there is none."""
    if configured is not None:
        path = Path(configured).expanduser()
        if _executable(path):
            return path
        raise ChromiumNotFound(
            f"SESSIONKEEPER_CHROMIUM_PATH={configured} is not an executable file; point it at a "
            "Chromium binary or unset it to search for one"
        )
    found = _playwright_chromium()
    if found is not None:
        return found
    for name in SYSTEM_NAMES:
        which = shutil.which(name)
        if which:
            if name == "chromium" and _executable(DEBIAN_BINARY):
                return DEBIAN_BINARY
            return Path(which)
    raise ChromiumNotFound(
        "no Chromium found: install one (`playwright install --with-deps chromium`, or "
        "`apt-get install chromium`) or set SESSIONKEEPER_CHROMIUM_PATH"
    )


# Chrome's reduced user agent string: only the major version varies, and "(X11; Linux x86_64)"
# stands for every Linux (https://www.chromium.org/updates/ua-reduction/).
_PLAIN_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/{major}.0.0.0 Safari/537.36")
_VERSION = re.compile(r"(\d+)\.\d+\.\d+\.\d+")


@functools.cache
def plain_user_agent(chromium: Path) -> str | None:
    """The user agent of plain Chrome of the same version as this Chromium, for
    `--user-agent`: headless Chromium says "HeadlessChrome", which WhatsApp answers with an
    "update Chrome" page. On the command line it holds for pages, workers and service
    workers alike, and for the network's User-Agent header. None if the version is unknown."""
    try:
        out = subprocess.run([str(chromium), "--version"], capture_output=True, text=True,
                             timeout=20, check=False, stdin=subprocess.DEVNULL,
                             env=browser_env()).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(out)
    return _PLAIN_AGENT.format(major=found[1]) if found else None
