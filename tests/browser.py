"""Debian's headless Chromium driven by Playwright's Python package (never a downloaded browser), for the page tests.
Without Chromium or Playwright a page test skips locally and fails under CI (the CI image installs `chromium`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM = os.environ.get("LLMLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the browser test (apt-get install chromium; pip install playwright)")
    pytest.skip(reason)


def chromium(timeout_ms: int) -> Iterator:
    """Yield a launched browser (for a module-scoped fixture); closed after."""
    if not os.path.isfile(CHROMIUM):
        unavailable(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set LLMLAB_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=timeout_ms)
        yield b
        b.close()
