"""Rolling-deploy cycles (see scripts/bench-handover). Results: results/handover-bench/."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_vault import admin, server_url, with_db  # noqa: E402
from tests.support.daemon import Daemon, browser_pids, free_port  # noqa: E402

SESSION = "handover"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "handover-bench")
    args = parser.parse_args()
    base = server_url()
    name = f"sk_hbench_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(base, f'CREATE DATABASE "{name}"'))
    work = Path(tempfile.mkdtemp(prefix="sk-hbench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONKEEPER_")}
    env.update(DATABASE_URL=with_db(base, name), SESSIONKEEPER_TARGET="demo",
               SESSIONKEEPER_DEMO_PORT=str(free_port()), SESSIONKEEPER_SESSION_ID=SESSION,
               SESSIONKEEPER_LOG_FORMAT="json", SESSIONKEEPER_DEMO_MESSAGE_RATE="60",
               SESSIONKEEPER_DEMO_LINK_AFTER="1")

    def launch(n: int) -> Daemon:
        # Each "container" has its own disk and network: its own profile dir and HTTP port.
        return Daemon({**env, "PORT": str(free_port()),
                       "SESSIONKEEPER_PROFILE_DIR": str(work / f"c{n}" / "profile"),
                       "SESSIONKEEPER_DATA_DIR": str(work / f"c{n}" / "state")})

    rows: list[dict[str, Any]] = []
    overlap = 0
    daemons: list[Daemon] = []
    try:
        old = launch(0)
        daemons.append(old)
        old.wait_for("login_checkpoint", 60)
        for cycle in range(1, args.cycles + 1):
            time.sleep(1.0)  # the page writes messages meanwhile
            new = launch(cycle)
            daemons.append(new)
            new.wait_for("waiting_for_lease", 60)
            sigterm = time.monotonic()
            old.signal(signal.SIGTERM)
            while not any(e.get("event") == "ready" for e in new.events):
                if browser_pids(old.proc.pid) and browser_pids(new.proc.pid):
                    overlap += 1
                if time.monotonic() - sigterm > 60:
                    raise SystemExit("no ready state:\n" + new.log_text())
                time.sleep(0.02)
            ready_at = new.wait_for("ready")["_t"]
            assert old.wait_exit(30) == 0
            final = old.wait_for("shutdown_completed")["generation"]
            restored = new.wait_for("session_restored")["generation"]
            handover = new.wait_for("handover_completed", 10)["seconds"]
            row = {"cycle": cycle, "sigterm_to_ready_s": round(ready_at - sigterm, 3),
                   "logged_handover_s": handover, "final_generation": final,
                   "restored_generation": restored,
                   "qr_shown": "qr_required" in new.names()}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            assert restored == final and not row["qr_shown"], row
            old = new
        old.signal(signal.SIGTERM)
        old.wait_exit(30)
    finally:
        for d in daemons:
            d.kill_all()  # waits until their Chromiums are gone: nothing writes in work now
        shutil.rmtree(work, ignore_errors=True)  # a profile per cycle, 54 MB for 20
        asyncio.run(admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    times = [r["sigterm_to_ready_s"] for r in rows]
    result = {"cycles": len(rows), "median_sigterm_to_ready_s": statistics.median(times),
              "max_sigterm_to_ready_s": max(times),
              "median_logged_handover_s": statistics.median(r["logged_handover_s"] for r in rows),
              "qr_shown": sum(r["qr_shown"] for r in rows),
              "generations_lost": sum(r["restored_generation"] != r["final_generation"]
                                      for r in rows),
              "samples_with_two_browsers": overlap, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
