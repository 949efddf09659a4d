"""Open a profile in a real Chromium on the demo site and read what the page stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from app.browser import remove_singletons
from app.chromium import CHROMIUM_ARGS, find_chromium
from app.demo.server import DemoSite


@asynccontextmanager
async def demo_page(profile: Path, demo_port: int,
                    message_rate: float = 0) -> AsyncIterator[tuple[DemoSite, Page]]:
    """The demo site served on demo_port and a Chromium on profile showing it; both closed
    (Chromium writing what it holds) when the block ends."""
    site = DemoSite(port=demo_port, message_rate=message_rate)
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
                yield site, page
            finally:
                await context.close()
    finally:
        await site.stop()


async def inspect_demo_profile(profile: Path, demo_port: int) -> dict[str, Any]:
    """demoInspect() of the demo page loaded from profile (the demo site on demo_port)."""
    async with demo_page(profile, demo_port) as (_, page):
        await page.wait_for_function(
            "['ready', 'qr'].includes(document.body.dataset.state)", timeout=15000)
        info: dict[str, Any] = await page.evaluate("window.demoInspect()")
        return info
