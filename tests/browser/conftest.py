"""Headless Chromium for browser tests: Debian's package, driven by Playwright by path.

If /usr/bin/chromium is missing, scripts/install_chromium.sh installs it (as root); the
browser tests are skipped only when that is impossible.
"""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "tests" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> Path | None:
    if not CHROMIUM.exists():
        subprocess.run(["sh", str(ROOT / "scripts" / "install_chromium.sh")], check=False)
    return CHROMIUM if CHROMIUM.exists() else None


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    path = ensure_chromium()
    if path is None:
        pytest.skip("chromium is not installed and cannot be installed (needs root and apt)")
    return path


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture
def browser(chromium_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; the test's own ORM calls are
    # still synchronous and safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            instance.close()
