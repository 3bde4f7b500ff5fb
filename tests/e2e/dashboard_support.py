"""Helpers of the dashboard tests: the serving tests' store and trained models
(``serving_prepared`` in tests/e2e/conftest.py), a real uvicorn server per test
module, and headless Chromium from Debian driven by Playwright (no browser download).

Chromium: ``/usr/bin/chromium`` (``apt-get install chromium``). In CI (``CI`` set)
a missing browser fails the tests; locally they are skipped, saying why.
Screenshots of every page go to ``test-artifacts/dashboard/`` (gitignored).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import serving_support as support

CHROMIUM = Path(os.environ.get("TIER_ML_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "dashboard"
#: An analyst: reads tiers and predictions, no admin scope.
ANALYST_KEY = "key-analyst"
ADMIN_NAME, ADMIN_KEY = "ops", support.ALL_KEY  # every scope (see serving_support.ENV_KEYS)
KEYS = f"{support.ENV_KEYS};analyst:{ANALYST_KEY}:tiers:read,predictions:read"


def chromium_missing_locally() -> bool:
    """True when the browser tests should be skipped: no Chromium and not in CI."""
    return not CHROMIUM.exists() and not os.environ.get("CI")


SKIP_REASON = (
    f"headless Chromium not found at {CHROMIUM}: install Debian's `chromium` package "
    "(apt-get install -y chromium) to run the dashboard browser tests"
)


def require_chromium() -> None:
    """Skip (locally) or fail (in CI) when the Debian Chromium is not installed."""
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(SKIP_REASON)
    pytest.skip(SKIP_REASON)


@contextlib.contextmanager
def dashboard_server(store_url: str, tracking_uri: str, **extra: Any) -> Iterator[str]:
    """A real uvicorn server with the dashboard over ``store_url``; yields its base URL."""
    from serving.app import create_app

    settings = support.settings_for(store_url, tracking_uri, api_keys=KEYS, **extra)
    with support.running_server(create_app(settings)) as base_url:
        yield base_url


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium under Playwright (sync API)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any, base_url: str) -> Any:
    """A page in a fresh context (its own cookies), downloads allowed, short timeouts."""
    context = browser.new_context(
        base_url=base_url, accept_downloads=True, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(60_000)  # CI machines are slow and shared
    return context.new_page()


def log_in(page: Any, key: str, start: str = "/dashboard") -> None:
    """Open ``start``, get sent to the login form, log in with ``key``, land on ``start``."""
    page.goto(start)
    page.wait_for_url("**/login?next=*")
    page.fill("#api_key", key)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_load_state("domcontentloaded")


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot saved as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def csrf_token(page: Any) -> str:
    """The session's CSRF token, from any form on the page (the log-out form is on every page)."""
    return page.locator("input[name=csrf_token]").first.get_attribute("value")
