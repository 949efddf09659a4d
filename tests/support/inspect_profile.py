"""Open a profile in a real Chromium on the demo site and read what the page stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import async_playwright

from app.browser import remove_singletons
from app.chromium import CHROMIUM_ARGS, find_chromium
from app.demo.server import DemoSite


async def inspect_demo_profile(profile: Path, demo_port: int) -> dict[str, Any]:
    """demoInspect() of the demo page loaded from profile (the demo site on demo_port)."""
    site = DemoSite(port=demo_port, message_rate=0)
    url = await site.start()
    remove_singletons(profile)
    try:
        async with async_playwright() as p:
            context = await p.chromium.launch_persistent_context(
                str(profile), executable_path=str(find_chromium()), headless=True,
                args=CHROMIUM_ARGS)
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(url)
                await page.wait_for_function(
                    "['ready', 'qr'].includes(document.body.dataset.state)", timeout=15000)
                info: dict[str, Any] = await page.evaluate("window.demoInspect()")
                return info
            finally:
                await context.close()
    finally:
        await site.stop()
