"""Browser tests: the real stack (API + one worker, demo mode) driven by Debian's Chromium via Playwright."""

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import REPO, Stack, running_stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO / "test-output" / "screenshots"
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API and one Celery worker on the test Postgres and Redis, in demo mode (builtin:tiny)."""
    with running_stack(database_url, redis_url, tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (never a downloaded browser build)."""
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing; CI=true needs it")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def console_problem(message) -> str | None:
    """A console error worth failing for, as text; None for the browser's note that an API request
    answered an error status (the page shows those, and tests ask for them)."""
    if message.type != "error":
        return None
    api_status = message.text.startswith("Failed to load resource: the server responded with a status of 4")
    if api_status and "/api/" in message.location.get("url", ""):
        return None
    return f"{message.text} ({message.location.get('url')}:{message.location.get('lineNumber')})"


@pytest.fixture
def open_page(browser, stack: Stack) -> Iterator[Callable]:
    """Opens the app signed in with a token (via the `#token=` URL); fails the test on any script error
    or console error (a module that does not load is one)."""
    contexts, errors = [], []

    def open_app(token: str, viewport: dict = DESKTOP, color_scheme: str = "light"):
        context = browser.new_context(viewport=viewport, color_scheme=color_scheme, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(console_problem(message)))
        page.goto(f"{stack.url}/#token={token}")
        return page

    yield open_app
    for context in contexts:
        context.close()
    errors = [error for error in errors if error]
    assert not errors, f"script errors on the page: {errors}"


def screenshot(page, name: str) -> Path:
    """Save the whole page under test-output/screenshots/ (git-ignored) for people to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def as_upload(files: list) -> list[dict]:
    """photo_files()'s multipart tuples as Playwright file payloads."""
    return [{"name": name, "mimeType": mime, "buffer": data} for _field, (name, data, mime) in files]
