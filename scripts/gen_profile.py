"""Builds a logged-in demo-site profile in a real Chromium (see scripts/gen-profile).

A new profile is linked (the "phone scan" is `DemoSite.link`), then the page syncs
`--size-mb` of chat history into IndexedDB (4 KiB records, every 16th with a 60 KB photo Blob),
stores its credentials and registers a service worker. An existing profile is opened as it is.
Then the page's chat writer runs at `--rate` messages per minute for `--chat-minutes`, and
Chromium is closed cleanly, so everything it held is on disk.

The origin of a profile includes the demo site's port: open it again (here, or with the
daemon's SESSIONKEEPER_DEMO_PORT) on the same `--port`, or the page will not find its login.
Facts about the result go to PROFILE.json beside the profile and to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.browser import Browser, LoginState  # noqa: E402
from app.chromium import find_chromium  # noqa: E402
from app.demo.server import DemoSite  # noqa: E402
from app.targets import demo_target  # noqa: E402

DEFAULT_PORT = 8766


def tree_bytes(path: Path) -> int:
    """Bytes in the regular files under path."""
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def meta_path(profile: Path) -> Path:
    return profile.with_name(profile.name + ".json")


def say(**fields: Any) -> None:
    print(json.dumps(fields), file=sys.stderr, flush=True)


async def _until_ready(browser: Browser, site: DemoSite, limit_s: float) -> bool:
    """Wait for the chat list, linking the QR code shown on the way; True when it linked."""
    linked = False
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        seen = await browser.observe()
        if seen.state is LoginState.READY:
            return linked
        if seen.state is LoginState.QR_REQUIRED and not linked and seen.qr_payload:
            linked = site.link(seen.qr_payload)
            if linked:
                say(event="linked", note="syncing history")
        elif seen.state is LoginState.LOGGED_OUT:
            raise SystemExit("the demo site logged this profile out (another --port?)")
        await asyncio.sleep(0.5)
    raise SystemExit(f"the demo page was not ready within {limit_s:.0f} s")


async def generate(profile: Path, site: DemoSite, *, chat_minutes: float,
                   chromium: Path | None = None) -> dict[str, Any]:
    """Link (or reopen) `profile` on a started `site`, let the page write chat for
    `chat_minutes`, close Chromium; facts about the profile."""
    started = time.monotonic()
    browser = Browser(find_chromium(chromium), profile, demo_target(site.url))
    try:
        await browser.start()
        linked = await _until_ready(browser, site, limit_s=120 + 3 * site.history_kb / 1024)
        say(event="ready", profile=profile.name, linked_now=linked,
            seconds=round(time.monotonic() - started, 1))
        page = browser.page
        assert page is not None
        before = await page.evaluate("demoInspect()")
        chat_start = time.monotonic()
        end = chat_start + chat_minutes * 60
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(30.0, left))
            facts = await page.evaluate("demoInspect()")
            say(event="writing", profile=profile.name, messages=facts["messages"],
                elapsed_s=round(time.monotonic() - chat_start))
        after = await page.evaluate("demoInspect()")
        if after["state"] != "ready" or not after["hasCreds"]:
            raise SystemExit(f"the page left the ready state: {after['state']}")
    finally:
        await browser.stop()
    facts = {
        "profile": str(profile), "port": site.port, "history_mb": site.history_kb / 1024,
        "chat_minutes": chat_minutes, "rate_per_minute": site.message_rate,
        "messages_written": after["messages"] - before["messages"],
        "messages_total": after["messages"],
        "profile_bytes": tree_bytes(profile),
        "indexeddb_bytes": tree_bytes(profile / "Default" / "IndexedDB"),
        "service_worker": after["serviceWorker"],
        "seconds": round(time.monotonic() - started, 1),
    }
    meta_path(profile).write_text(json.dumps(facts, indent=1))
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="profile directory (created if missing)")
    parser.add_argument("--size-mb", type=float, default=20.0,
                        help="chat history synced after a new link, MB (default 20)")
    parser.add_argument("--chat-minutes", type=float, default=0.0,
                        help="how long the chat writer runs (default 0)")
    parser.add_argument("--rate", type=float, default=30.0, help="messages per minute")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="demo site port")
    parser.add_argument("--chromium", type=Path, default=None, help="Chromium executable")
    args = parser.parse_args()
    if args.size_mb < 0 or args.chat_minutes < 0 or args.rate < 0:
        raise SystemExit("gen-profile: --size-mb, --chat-minutes and --rate must be >= 0")
    print(json.dumps(asyncio.run(_main(args)), indent=1))


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    site = DemoSite(port=args.port, message_rate=args.rate, history_kb=int(args.size_mb * 1024))
    await site.start()
    try:
        return await generate(args.profile.resolve(), site, chat_minutes=args.chat_minutes,
                              chromium=args.chromium)
    finally:
        await site.stop()


if __name__ == "__main__":
    main()
