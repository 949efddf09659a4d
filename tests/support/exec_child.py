"""A bot as `sessionkeeper exec` runs it: Playwright's persistent context on the profile folder.

Opens $SESSIONKEEPER_TARGET_URL (the demo site) in $SESSIONKEEPER_PROFILE_DIR and prints JSON
lines (`exec_child_*` events) on stdout, which the daemon's stdout carries too. On SIGTERM or
SIGINT it writes a last chat message (n = $CHILD_MARKER) and a localStorage item, closes the
browser (Chromium writes what it holds) and exits with $CHILD_EXIT_CODE (default 0).

Misbehaviours, for the tests: CHILD_IGNORE_STOP=1 ignores the stop signal; CHILD_CRASH_AFTER=S
writes the marker S seconds after the page is ready, then ends with exit code 3, leaving its
Chromium running; CHILD_KILL_SELF_ON_STOP=1 dies of SIGKILL on the stop signal; CHILD_LOGOUT_AFTER=S
removes the login key from localStorage S seconds after the page is ready, as a logout does;
CHILD_STOP_DELAY=S takes S seconds to stop after the signal (a bot finishing its work).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.chromium import CHROMIUM_ARGS, find_chromium  # noqa: E402

WRITE_MARKER = """
async (marker) => {
  localStorage.setItem("exec-marker", String(marker));
  const db = await new Promise((resolve, reject) => {
    const req = indexedDB.open("demo-chat", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("messages", {autoIncrement: true});
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const tx = db.transaction("messages", "readwrite");
  tx.objectStore("messages").add({n: marker, text: "written by the exec child at its stop",
                                  at: Date.now()});
  await new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onerror = reject; });
  return true;
}
"""


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def main() -> int:
    profile = os.environ["SESSIONKEEPER_PROFILE_DIR"]
    url = os.environ["SESSIONKEEPER_TARGET_URL"]
    marker = int(os.environ.get("CHILD_MARKER", "1000000"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if os.environ.get("CHILD_IGNORE_STOP") != "1":
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    else:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: say("exec_child_ignored_stop"))
    say("exec_child_started", pid=os.getpid(), pgid=os.getpgid(0),
        profile=profile, session=os.environ.get("SESSIONKEEPER_SESSION_ID"))
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            profile, executable_path=str(find_chromium()), headless=True, args=CHROMIUM_ARGS)
        page = context.pages[0] if context.pages else await context.new_page()
        await page.goto(url)
        shown = None
        ready_at: float | None = None
        crash_after = os.environ.get("CHILD_CRASH_AFTER")
        logout_after = os.environ.get("CHILD_LOGOUT_AFTER")
        while not stop.is_set():
            state = await page.evaluate("document.body.dataset.state")
            if state != shown:
                shown = state
                info = await page.evaluate("window.demoInspect()") if state == "ready" else {}
                say("exec_child_state", state=state, last_message=info.get("lastMessage"),
                    messages=info.get("messages"), exec_marker=await page.evaluate(
                        "localStorage.getItem('exec-marker')"))
                if state == "ready":
                    ready_at = time.monotonic()
            if logout_after and ready_at and time.monotonic() - ready_at > float(logout_after):
                # What a site does at a logout: its login key goes from localStorage. Then
                # the bot starts its client over, as whatsapp-web.js bots do after a logout
                # (closing the browser writes localStorage out at once).
                await page.evaluate("localStorage.removeItem('demo-token')")
                await context.close()
                context = await p.chromium.launch_persistent_context(
                    profile, executable_path=str(find_chromium()), headless=True,
                    args=CHROMIUM_ARGS)
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(url)
                say("exec_child_logged_out")
                ready_at = None
                logout_after = None
            if crash_after and ready_at and time.monotonic() - ready_at > float(crash_after):
                await page.evaluate(WRITE_MARKER, marker)  # IndexedDB writes reach the disk
                say("exec_child_crashing", marker=marker)
                os._exit(3)  # no cleanup: its Chromium keeps running
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        if os.environ.get("CHILD_KILL_SELF_ON_STOP") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(float(os.environ.get("CHILD_STOP_DELAY", "0")))
        await page.evaluate(WRITE_MARKER, marker)
        say("exec_child_wrote", marker=marker)
        await context.close()
    say("exec_child_stopped")
    return int(os.environ.get("CHILD_EXIT_CODE", "0"))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
