"""How bots live with the kept session (see scripts/bench-bots). Results: results/bots-bench/.

1. CDP reconnect after a login checkpoint: a Playwright client attached through /cdp while the
   QR code shows; the phone scan; the daemon closes Chromium for the checkpoint and relaunches
   it. Measured: from the client's `disconnected` event to the first reconnect through the
   same URL that reads the page (the proxy itself waits for the relaunch).
2. exec, final snapshot after the child exits: a child on the demo site (logged in, writing),
   SIGTERM; measured from the `child_exited` line to `shutdown_completed` (final snapshot
   committed, lease released), the snapshot's own duration, and SIGTERM to process exit.
"""

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
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from scripts.bench_vault import admin, server_url, with_db  # noqa: E402
from tests.support.daemon import Daemon, free_port, link_demo  # noqa: E402

TOKEN = "bench-bots-token-0123456789"
CHILD = str(ROOT / "tests" / "support" / "exec_child.py")


def _stamp(event: dict[str, Any]) -> float:
    """The event's own timestamp (the log line's), in seconds."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def cdp_reconnect(env: dict[str, str], work: Path, run: int) -> dict[str, Any]:
    """One login with a client attached; the client's wait to reconnect after the checkpoint."""
    session = f"cdp{run}"
    demo_port = int(env["SESSIONKEEPER_DEMO_PORT"])
    daemon = Daemon({**env, "PORT": str(free_port()), "SESSIONKEEPER_SESSION_ID": session,
                     "SESSIONKEEPER_CDP": "true", "SESSIONKEEPER_HTTP_TOKEN": TOKEN,
                     "SESSIONKEEPER_PROFILE_DIR": str(work / session)})
    url = f"http://127.0.0.1:{daemon.port}/cdp/{session}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        daemon.wait_for("qr_required", 60)
        with sync_playwright() as pw:
            client = pw.chromium.connect_over_cdp(url, headers=headers)
            link_demo(demo_port)
            # The moment the proxy closed the client's socket: Chromium went for the checkpoint.
            gone = daemon.wait_for("cdp_client_disconnected", 30, by="browser")["_t"]
            attempts = 0
            while True:
                attempts += 1
                try:
                    again = pw.chromium.connect_over_cdp(url, headers=headers, timeout=20000)
                    state = again.contexts[0].pages[0].evaluate("document.body.dataset.state")
                    break
                except Exception:  # not back yet
                    if time.monotonic() - gone > 60:
                        raise
                    time.sleep(0.02)
            back = time.monotonic()
            again.close()
            client.close()
        restarted = daemon.wait_for("browser_restarted", 5, reason="checkpoint")
        checkpoint = daemon.wait_for("login_checkpoint", 5)
        daemon.signal(signal.SIGTERM)
        daemon.wait_exit(30)
        return {"run": run, "reconnect_wait_s": round(back - gone, 3),
                "attempts": attempts, "page_state": state,
                "checkpoint_ms": checkpoint["duration_ms"],
                "restart_after_disconnect_s": round(restarted["_t"] - gone, 3)}
    finally:
        daemon.kill_all()


def exec_final_snapshot(env: dict[str, str], work: Path, run: int) -> dict[str, Any]:
    """One exec session: log in, let the child write, SIGTERM; the final snapshot's timing."""
    session = f"exec{run}"
    demo_port = int(env["SESSIONKEEPER_DEMO_PORT"])
    daemon = Daemon({**env, "PORT": str(free_port()), "SESSIONKEEPER_SESSION_ID": session,
                     "SESSIONKEEPER_DEMO_MESSAGE_RATE": "120",
                     "SESSIONKEEPER_PROFILE_DIR": str(work / session)},
                    "exec", "--", sys.executable, CHILD)
    try:
        daemon.wait_for("exec_child_state", 60, state="qr")
        link_demo(demo_port)
        daemon.wait_for("login_checkpoint", 60)
        time.sleep(3)  # the page writes chat messages
        sent = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.wait_exit(60)
        exited_at = time.monotonic()
        child = daemon.wait_for("child_exited")
        final = daemon.wait_for("snapshot_committed", kind="shutdown")
        done = daemon.wait_for("shutdown_completed")
        return {"run": run, "exit_code": code,
                "child_exit_to_shutdown_completed_ms": round(
                    (_stamp(done) - _stamp(child)) * 1000, 1),
                "final_snapshot_ms": final["duration_ms"],
                "final_snapshot_uploaded_bytes": final["bytes_uploaded"],
                "child_stop_ms": done["driver_stop_ms"],
                "sigterm_to_exit_s": round(exited_at - sent, 3)}
    finally:
        daemon.kill_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bots-bench")
    args = parser.parse_args()
    base = server_url()
    name = f"sk_bbench_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(base, f'CREATE DATABASE "{name}"'))
    work = Path(tempfile.mkdtemp(prefix="sk-bbench-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SESSIONKEEPER_") and k != "PORT"}
    env.update(DATABASE_URL=with_db(base, name), SESSIONKEEPER_TARGET="demo",
               SESSIONKEEPER_DEMO_PORT=str(free_port()), SESSIONKEEPER_LOG_FORMAT="json",
               SESSIONKEEPER_DEMO_MESSAGE_RATE="60", SESSIONKEEPER_DATA_DIR=str(work / "st"))
    cdp_rows: list[dict[str, Any]] = []
    exec_rows: list[dict[str, Any]] = []
    try:
        for run in range(1, args.runs + 1):
            cdp_rows.append(cdp_reconnect(env, work, run))
            print(json.dumps(cdp_rows[-1]), file=sys.stderr, flush=True)
            exec_rows.append(exec_final_snapshot(env, work, run))
            print(json.dumps(exec_rows[-1]), file=sys.stderr, flush=True)
    finally:
        asyncio.run(admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    result = {
        "runs": args.runs,
        "median_cdp_reconnect_wait_s": med(cdp_rows, "reconnect_wait_s"),
        "max_cdp_reconnect_wait_s": max(r["reconnect_wait_s"] for r in cdp_rows),
        "median_checkpoint_ms": med(cdp_rows, "checkpoint_ms"),
        "median_exec_child_exit_to_shutdown_completed_ms":
            med(exec_rows, "child_exit_to_shutdown_completed_ms"),
        "median_exec_final_snapshot_ms": med(exec_rows, "final_snapshot_ms"),
        "median_exec_sigterm_to_exit_s": med(exec_rows, "sigterm_to_exit_s"),
        "cdp": cdp_rows, "exec": exec_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("cdp", "exec")}, indent=1))


if __name__ == "__main__":
    main()
