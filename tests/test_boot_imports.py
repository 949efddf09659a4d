"""What a daemon's boot imports: the heavy modules it does not need yet stay out.

A container restart is what a user waits through, from process spawn to `ready`; every
module imported before the restore and Chromium's launch can begin is on that path
(scripts/bench-daemon measures it). Not a timed test: a cheap check that a change does not put
back at import time what app/supervisor.py and the modules it uses load only when needed.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.daemon import ROOT

# Imported only where they are used, never by `import app.cli, app.supervisor` (the daemon's
# imports before run_daemon starts):
LAZY = {
    # rich (and pygments, attrs) draw progress bars for CLI commands on a terminal; structlog
    # would load it for pretty tracebacks the daemon's JSON lines never show (app/log.py).
    "rich", "pygments", "attr",
    # fastcdc (and click, its own CLI) cut files into chunks: snapshots, never the boot.
    "fastcdc", "click",
    # segno draws QR codes: only once a QR code is shown.
    "segno",
    # psutil reads Chromium's memory when /metrics is scraped.
    "psutil",
    # playwright is imported by the driver's preparation (app/browser.py), which starts
    # Playwright's driver process at once, alongside the rest of the boot.
    "playwright",
    # aiohttp (client and server): the HTTP server, the demo site, the CDP proxy and the
    # webhook import it when they start, after Playwright's driver process has been spawned.
    "aiohttp",
    # The demo site, the status page, a child-process driver, the CDP proxy: not every boot's.
    "app.demo", "app.status_page", "app.cdp", "app.drivers.child",
}


def boot_modules(statement: str) -> set[str]:
    """The modules (top-level names and app's own) that statement imports, in a new process."""
    code = (f"import json, sys\n{statement}\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    names: set[str] = set()
    for name in json.loads(out):
        names.add(name.split(".")[0])
        if name.startswith("app."):
            names.add(name)
    return names


def test_daemon_boot_imports_no_heavy_module() -> None:
    loaded = boot_modules("import app.cli, app.supervisor")
    assert sorted(LAZY & loaded) == []


def test_the_lazy_imports_load_on_use() -> None:
    # A function-level import is only run when called: call each (a misspelt one fails here).
    loaded = boot_modules(
        "import io, os\n"
        "from app.progress import BarProgress\n"
        "from app.qr import render_qr\n"
        "from app.process_memory import tree_memory\n"
        "from app.snapshot.codec import iter_chunks\n"
        "BarProgress()\n"
        "render_qr('payload', 'svg')\n"
        "tree_memory(os.getpid())\n"
        "assert b''.join(iter_chunks(io.BytesIO(b'x' * 100_000))) == b'x' * 100_000\n")
    assert {"rich", "segno", "psutil", "fastcdc"} <= loaded
