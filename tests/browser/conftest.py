"""What the browser tests drive: the embedded stack exactly as `careweave up` runs it
(Temporal dev server WITH its UI under /temporal, FHIR server, worker, MLLP gateway, the
API with the sign-in, codec and the UI behind it), on free ports, and Debian's Chromium
through Playwright (the system browser: nothing is downloaded).

`make test` installs Chromium when /usr/bin/chromium is missing. Screenshots for the docs
are taken only with CAREWEAVE_SCREENSHOTS=1 (into docs/screenshots/).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Locator, Page

from adapters.users import UserDirectory
from models.identity import Role
from tests.support.browser import chromium
from tests.support.engine import engine_settings
from tests.support.fhir_server import free_port
from workers.stack import RunningStack, embedded_stack

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives Debian's Chromium through Playwright")


@dataclass(frozen=True)
class Operator:
    username: str
    password: str


@dataclass
class BrowserStack:
    stack: RunningStack
    operator: Operator

    @property
    def api_url(self) -> str:
        return self.stack.api_url

    @property
    def raw_ui_url(self) -> str:
        """The dev server's own UI listener (loopback), not behind the sign-in."""
        return self.stack.settings.resolved_temporal_ui_upstream


@pytest.fixture(scope="module")
async def ui_stack() -> AsyncIterator[BrowserStack]:
    with tempfile.TemporaryDirectory(prefix="careweave-browser-") as state:
        fhir_port = free_port()
        settings = engine_settings(
            Path(state),
            f"http://127.0.0.1:{fhir_port}/fhir",
            fhir_server_port=fhir_port,
            temporal_address=f"127.0.0.1:{free_port()}",
            temporal_ui_port=free_port(),
            api_port=free_port(),
            partners_embedded=False,
            task_queue="careweave-browser",
        )
        async with embedded_stack(settings) as stack:
            operator = Operator("ops-browser", "a long enough test passphrase")
            UserDirectory.from_url(settings.resolved_database_url).add(
                operator.username, operator.password, [Role.OPS]
            )
            yield BrowserStack(stack, operator)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One Chromium for the session (tests/support/browser.py: the system browser)."""
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh browser profile per test: no cookie of another test's sign-in."""
    context: BrowserContext = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield await context.new_page()
    finally:
        await context.close()


@pytest.fixture
def screenshot() -> Callable[[Page | Locator, str], Awaitable[None]]:
    """Saves a page (the viewport as a person sees it: the UI scrolls inside its own panes)
    or one element of it, for the docs, on request only (CAREWEAVE_SCREENSHOTS=1)."""

    async def save(shown: Page | Locator, name: str) -> None:
        if os.environ.get("CAREWEAVE_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await shown.screenshot(path=str(SCREENSHOTS / name))

    return save
