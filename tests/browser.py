"""A real headless browser for UI tests: the system's Chromium, driven by Playwright.

Playwright's own browser download is not reachable from CI or the dev machines, so the
tests use the distribution's ``chromium`` package through ``executable_path``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_ENV = "TRAINYARD_CHROMIUM"
INSTALL_HINT = "apt-get install -y chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]",
]


def chromium_path() -> str | None:
    """The Chromium to drive: ``$TRAINYARD_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH."""
    configured = os.environ.get(CHROMIUM_ENV, "").strip()
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def browser_page(viewport: tuple[int, int] = (1400, 900), init_script: str | None = None) -> Iterator["Page"]:
    """A fresh headless Chromium page; browser and context are closed after, whatever happens.

    ``--no-sandbox``: tests run as root, where Chromium refuses its sandbox. ``init_script``
    runs before every page's own scripts (e.g. to preset the app's localStorage). No host
    name but localhost resolves: tests never use the internet, and a UI that phones home
    (telemetry, web fonts) fails at once instead of waiting for a DNS timeout.
    """
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError(f"no Chromium found (set ${CHROMIUM_ENV} or {INSTALL_HINT})")
    width, height = viewport
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            if init_script:
                context.add_init_script(init_script)
            page = context.new_page()
            try:
                yield page
            finally:
                context.close()
        finally:
            browser.close()


def grow_to_content(page: "Page", max_height: int = 6000) -> None:
    """Make the viewport as tall as the content, so a screenshot shows everything a user can scroll to.

    Single-page apps such as MLflow's scroll inside a panel, not the document, so Playwright's
    ``full_page`` alone captures one screen; charts that render only when scrolled into view
    render once the viewport holds them.
    """
    overflow = page.evaluate(
        """() => Math.max(0, ...[...document.querySelectorAll('*')]
              .filter(e => /(auto|scroll)/.test(getComputedStyle(e).overflowY))
              .map(e => e.scrollHeight - e.clientHeight))"""
    )
    size = page.viewport_size or {"width": 1400, "height": 900}
    height = min(max_height, size["height"] + int(overflow))
    if height > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": height})


def save_screenshot(page: "Page", directory: Path, name: str) -> Path:
    """A full-page PNG in ``directory`` (created); the path is printed, so a test log says where it is."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path
