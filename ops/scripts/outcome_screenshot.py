"""The Temporal UI's workflow list with the order outcome columns, as a PNG (README).

Run against a stack whose workers ran a few orders (``make demo KEEP=1`` does)::

    .venv/bin/python ops/scripts/outcome_screenshot.py docs/images/outcomes-list.png

It opens the dev server's UI in headless Chromium (``make browser``), swaps the
``Run ID``, ``Type`` and ``Start`` columns for the ``OrderOutcome`` and ``OrderReason``
search attributes
(the UI's own column settings, kept in the browser profile, which is thrown away)
and waits until the list shows an outcome before it takes the picture.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from playwright.async_api import async_playwright

from orders_ops.journey_ui import CHROMIUM, CHROMIUM_ARGS
from orders_ops.settings import StackSettings


async def shoot(out: str) -> None:
    url = f"{StackSettings.from_env().temporal_ui_url}/namespaces/default/workflows"
    async with async_playwright() as p:
        with tempfile.TemporaryDirectory() as profile:
            browser = await p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1400, "height": 560},
            )
            page = browser.pages[0] if browser.pages else await browser.new_page()
            await page.goto(url, wait_until="domcontentloaded")
            button = "[data-testid=workflows-summary-table-configuration-button]"
            await page.click(button, timeout=30_000)
            item = "[data-testid='orderable-list-item-{}-{}-button']"
            for name in ("Run ID", "Type", "Start"):
                await page.click(item.format(name, "remove"))
            for name in ("OrderOutcome", "OrderReason"):
                await page.click(item.format(name, "add"))
            await page.click("button[aria-label='Close Workflows Table configuration']")
            await page.locator("td", has_text="PaymentDeclined").first.wait_for(timeout=30_000)
            await page.wait_for_timeout(500)
            await page.screenshot(path=out)
            await browser.close()


if __name__ == "__main__":
    asyncio.run(shoot(sys.argv[1] if len(sys.argv) > 1 else "outcomes-list.png"))
