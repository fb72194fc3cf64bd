"""Headless Chromium screenshots of the Temporal UI for ``orders-journey``.

Playwright drives Debian's Chromium (``make browser`` installs it; never
``playwright install``). Each shot also returns the page's text, so the
journey checks what the picture shows instead of trusting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/lib/chromium/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class Shot:
    file: str  # file name under the images folder
    title: str
    url: str
    wait_for: str  # text that shows the page holds what it will show
    refuse: str | None = None  # URL prefix answered 403 (the codec server: a reader without it)


def _starting_with(prefix: str) -> Callable[[str], bool]:
    return lambda url: url.startswith(prefix)


def browser_available() -> str | None:
    """None when screenshots can be taken, else why not and the fix."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: run 'make browser'"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: run 'make install'"
    return None


async def take(shots: list[Shot], out_dir: Path, *, patience: float = 60.0) -> list[dict[str, Any]]:
    """Take every shot in one browser; returns per shot its file and page text. A shot is
    taken once its ``wait_for`` text shows, or after ``patience`` seconds (the UI retries a
    refused codec server three times before it shows the payload as stored)."""
    from playwright.async_api import Route, async_playwright
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    refused: list[str] = []

    async def refuse(route: Route) -> None:
        refused.append(route.request.url)
        await route.fulfill(status=403, body="refused by orders-journey")

    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    taken = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            for shot in shots:
                # a fresh context per shot; no service worker, whose requests a route
                # would not see
                context = await browser.new_context(
                    viewport={"width": 1400, "height": 1200}, service_workers="block"
                )
                if shot.refuse:
                    await context.route(_starting_with(shot.refuse), refuse)
                refused.clear()
                t0 = time.monotonic()
                page = await context.new_page()
                await page.goto(shot.url, wait_until="domcontentloaded")
                with contextlib.suppress(PlaywrightTimeout):
                    marker = page.get_by_text(shot.wait_for, exact=False).first
                    await marker.wait_for(state="attached", timeout=patience * 1000)
                    await asyncio.sleep(1)  # let the rest of the page decode
                text = await page.inner_text("body")  # what the picture shows
                path = out_dir / shot.file
                await page.screenshot(path=str(path), full_page=True)
                await context.close()
                taken.append(
                    {
                        "file": str(path),
                        "title": shot.title,
                        "text": text,
                        "seconds": round(time.monotonic() - t0, 1),
                        "refused_calls": len(refused),
                    }
                )
        finally:
            await browser.close()
    return taken
