"""What the reviewer inbox's browser tests drive: the session's Temporal dev server and
FHIR server, two MLLP partner systems, an engine (worker + MLLP gateway) routing
discharges to them on its own task queue, the review API with the web pages, and Debian's
Chromium. Imported explicitly by tests/browser/test_reviewer_inbox.py.

Screenshots for the docs are written only with CAREWEAVE_SCREENSHOTS=1.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page
from temporalio.client import Client

from models.identity import Role
from tests.support.api import RunningApi, running_api
from tests.support.discharge import running_discharge_engine, running_partners
from tests.support.engine import TEST_KEY_RING, Engine
from tests.support.partner import Partner
from workers.api.refs import ExchangeRefs

PASSWORD = "a long browser reviewer password"
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 820, "height": 1180}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def inbox_partners() -> Iterator[dict[str, Partner]]:
    with running_partners() as running:
        yield running


@pytest.fixture(scope="module")
async def inbox_engine(
    temporal_client: Client,
    fhir_base_url: str,
    inbox_partners: dict[str, Partner],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    async with running_discharge_engine(
        temporal_client,
        fhir_base_url,
        inbox_partners,
        tmp_path_factory.mktemp("routing"),
        task_queue="careweave-browser-inbox",
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
async def inbox_api(inbox_engine: Engine) -> AsyncIterator[RunningApi]:
    async with running_api(inbox_engine) as api:
        yield api


@pytest.fixture(scope="module")
def inbox_browser(browser: Browser) -> Browser:
    """The session's Chromium (tests/browser/conftest.py)."""
    return browser


@contextlib.asynccontextmanager
async def fresh_page(
    browser: Browser, viewport: dict[str, int] | None = None
) -> AsyncIterator[Page]:
    """A page in a profile of its own: no cookie of another test's sign-in."""
    context = await browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def sign_in(page: Page, api: RunningApi, user: str, *roles: Role) -> None:
    """Through the real form: the inbox sends the browser to sign in, and back."""
    api.users.add(user, PASSWORD, roles)
    await page.goto(f"{api.base_url}/ui/")
    assert "/login?next=/ui/" in page.url
    await page.get_by_label("Username").fill(user)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{api.base_url}/ui/")


async def review_href(page: Page, workflow_id: str) -> str:
    """The page's link to this exchange's review. References are sealed with a fresh nonce
    every time, so a test finds its exchange by opening them with the test key ring."""
    refs = ExchangeRefs(TEST_KEY_RING)
    for href in await page.locator("a[href^='/ui/reviews/']").evaluate_all(
        "links => links.map(link => link.getAttribute('href'))"
    ):
        ref = re.sub(r"^/ui/reviews/", "", str(href))
        if refs.workflow_id(ref) == workflow_id:
            return str(href)
    raise AssertionError(f"the page links no review of {workflow_id}")


async def screenshot(page: Page, name: str) -> None:
    if os.environ.get("CAREWEAVE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
