"""Finding a Chromium to drive, and the flags it runs with.

Order: SESSIONKEEPER_CHROMIUM_PATH, else Playwright's own installed Chromium, else a system
`chromium`, `chromium-browser` or `google-chrome`. None found is a setup error (exit 2).

Playwright's Chromium is found where Playwright itself looks (its registry folder and the
revision its driver's browsers.json names), without starting Playwright's driver: that is a
Node process, too slow for a lookup at every start.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
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


def _playwright_package() -> Path | None:
    """The folder of Playwright's Python package, found without importing it."""
    try:
        spec = importlib.util.find_spec("playwright")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def playwright_registry() -> Path:
    """Where `playwright install` puts browsers, computed as Playwright's registry does:
    PLAYWRIGHT_BROWSERS_PATH (0: inside the package; relative: from the current folder),
    else the platform's cache folder."""
    configured = os.environ.get("PLAYWRIGHT_BROWSERS_PATH")
    package = _playwright_package()
    if configured == "0" and package is not None:
        return package / "driver" / "package" / ".local-browsers"
    if configured:
        return Path(configured).absolute()
    if sys.platform == "darwin":
        cache = Path.home() / "Library" / "Caches"
    elif sys.platform == "win32":
        cache = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ms-playwright"


@functools.cache
def playwright_revision(name: str = "chromium") -> str | None:
    """The browser revision this Playwright drives (its driver's browsers.json), or None."""
    package = _playwright_package()
    if package is None:
        return None
    try:
        browsers = json.loads((package / "driver" / "package" / "browsers.json").read_text())
        return next(str(b["revision"]) for b in browsers["browsers"] if b["name"] == name)
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None


# Playwright's EXECUTABLE_PATHS for Linux (chrome-linux64 since Chrome for Testing builds;
# chrome-linux before), then macOS.
_BINARIES = {
    "chromium": ("chrome-linux64/chrome", "chrome-linux-arm64/chrome", "chrome-linux/chrome",
                 "chrome-mac*/*.app/Contents/MacOS/*"),
    "chromium_headless_shell": ("chrome-headless-shell-linux*/chrome-headless-shell",
                                "chrome-linux/headless_shell",
                                "chrome-headless-shell-mac*/chrome-headless-shell"),
}
_ARM = platform.machine().lower() in ("aarch64", "arm64")


def _binary_in(folder: Path, kind: str) -> Path | None:
    for pattern in _BINARIES[kind]:
        found = sorted(folder.glob(pattern))
        # On a machine of one architecture, its own build first.
        found.sort(key=lambda p: ("arm64" in str(p)) != _ARM)
        for candidate in found:
            if _executable(candidate):
                return candidate
    return None


def _playwright_chromium() -> Path | None:
    """Playwright's own Chromium, if `playwright install chromium` put one here: the revision
    this Playwright expects, else the newest installed (revisions compared as numbers:
    chromium-1200 is newer than chromium-999), else a headless shell the same way."""
    root = playwright_registry()
    if not root.is_dir():
        return None
    for kind in ("chromium", "chromium_headless_shell"):
        expected = playwright_revision(kind.replace("_", "-"))
        revisions: list[tuple[bool, int, Path]] = []
        for folder in root.glob(f"{kind}-*"):
            revision = folder.name.removeprefix(f"{kind}-")
            if revision.isdigit():
                revisions.append((revision == expected, int(revision), folder))
        for _, _, folder in sorted(revisions, reverse=True):
            found = _binary_in(folder, kind)
            if found is not None:
                return found
    return None


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
