"""The reviewer inbox in a real browser (Debian's Chromium through Playwright) against the
real engine: messages come in over MLLP, reviews are decided on the pages, and the result
is checked where it lands (the FHIR server, the partner system).

The feed (one module fixture) makes four reviews: two unmapped local codes, a result whose
order never came, and a discharge the billing partner refuses. Tests run in file order:
the sizes are checked on the failed delivery before it is edited and resent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from models.identity import Role
from tests.browser.inbox_fixtures import (
    DESKTOP,
    TABLET,
    fresh_page,
    inbox_api,
    inbox_browser,
    inbox_engine,
    inbox_partners,
    review_href,
    screenshot,
    sign_in,
)
from tests.support.api import RunningApi
from tests.support.discharge import delivery_id, received, send, wait_received
from tests.support.engine import TEST_KEY_RING, Engine, mllp_send
from tests.support.partner import Partner
from workers import sample_messages as sm
from workers.api.refs import ExchangeRefs

__all__ = ["inbox_api", "inbox_browser", "inbox_engine", "inbox_partners"]

# Invented people: none of these may reach a page a signed-out browser sees, a URL or a title.
# Their identifiers are this file's own: the session's dev server is shared with other
# tests, whose exchanges (keyed by patient and visit pseudonyms) must not be these.
CLARA = sm.SamplePatient(mrn="MRN-BRW7001", family="Browserpatient", given="Clara")
OTTO = sm.SamplePatient(mrn="MRN-BRW7003", family="Deliverypatient", given="Otto", sex="M")
OTTO_VISIT = "V-BRW7003"
# A local code the concept map lacks, whose text reads like one LOINC name of the map.
POTASSIUM_PLASMA = sm.ResultValue("KPL", "Potassium plasma", "4.3", "mmol/L", "3.5-5.1", "N")
PHI = ("MRN-BRW7001", "MRN-BRW7003", "Browserpatient", "Clara", "Deliverypatient", "Otto", "BRW-70")


@dataclass(frozen=True)
class Feed:
    unmapped: str  # decided with the keyboard
    unmapped_kept: str  # stays pending (sizes, signed-out checks)
    orphan: str
    delivery: str
    delivery_visit: str


@pytest.fixture(scope="module")
async def feed(inbox_engine: Engine, inbox_partners: dict[str, Partner]) -> AsyncIterator[Feed]:
    engine = inbox_engine
    messages: list[str | bytes] = []
    for number, line in (("BRW-7001", POTASSIUM_PLASMA), ("BRW-7002", sm.UNMAPPED)):
        order = sm.SampleOrder(number, patient=CLARA)
        messages += [
            sm.lab_order(order, f"{number}-O"),
            sm.lab_result(order, f"{number}-R", [line, sm.SODIUM]),
        ]
    orphan = sm.SampleOrder("BRW-7004", patient=CLARA)
    messages.append(sm.lab_result(orphan, "BRW-7004-R", [sm.POTASSIUM]))
    await mllp_send(engine.mllp_port, messages)

    billing = inbox_partners["billing"]
    # AR 100 is not temporary: the first refusal goes to a reviewer.
    await billing.aset_mode("AR", code="100", text="PV1 out of place", times=1, patient_id=OTTO.mrn)
    stay = sm.SampleStay(OTTO_VISIT, patient=OTTO)
    await send(engine, sm.adt_event(stay, "BRW-7003-1", "A03"))

    made = Feed(
        unmapped=engine.lab_workflow_id("BRW-7001"),
        unmapped_kept=engine.lab_workflow_id("BRW-7002"),
        orphan=engine.lab_workflow_id("BRW-7004"),
        delivery=delivery_id("billing", OTTO.mrn),
        delivery_visit=OTTO_VISIT,
    )
    for workflow_id in (made.unmapped, made.unmapped_kept, made.orphan, made.delivery):
        await engine.wait_for_review(workflow_id, timeout=60)
    yield made


async def assert_no_phi_in_address_or_title(page: Page) -> None:
    title = await page.title()
    for secret in PHI:
        assert secret not in page.url and secret not in title, (secret, page.url, title)


async def tab_to(page: Page, selector: str, *, presses: int = 80) -> None:
    """Press Tab until the focused element matches `selector`, and check it shows focus."""
    for _ in range(presses):
        await page.keyboard.press("Tab")
        if await page.evaluate(
            "s => !!document.activeElement && document.activeElement.matches(s)", selector
        ):
            outline = await page.evaluate(
                "() => { const s = getComputedStyle(document.activeElement);"
                " return [s.outlineStyle, s.outlineWidth]; }"
            )
            assert outline[0] != "none" and outline[1] != "0px", f"{selector}: focus not shown"
            return
    raise AssertionError(f"Tab never reached {selector}")


async def test_sign_in_and_the_inbox_lists_the_reviews_the_feed_created(
    inbox_browser: Browser, inbox_api: RunningApi, feed: Feed
) -> None:
    async with fresh_page(inbox_browser) as page:
        await sign_in(page, inbox_api, "rev-inbox", Role.REVIEWER)
        rows = page.locator("#inbox-rows tbody tr")
        await expect(rows.filter(has_text="Unmapped local code")).to_have_count(2)
        await expect(rows.filter(has_text="Result without an order")).to_have_count(1)
        await expect(rows.filter(has_text="Failed delivery")).to_have_count(1)
        for workflow_id in (feed.unmapped, feed.unmapped_kept, feed.orphan, feed.delivery):
            await review_href(page, workflow_id)  # each review has its row and link
        await expect(rows.first.get_by_role("cell").nth(4)).to_have_text("nobody")
        await assert_no_phi_in_address_or_title(page)
        content = await page.content()
        assert all(secret not in content for secret in PHI)
        await screenshot(page, "inbox.png")


async def test_a_reviewer_approves_an_unmapped_code_with_the_keyboard_and_it_publishes(
    inbox_browser: Browser, inbox_api: RunningApi, inbox_engine: Engine, feed: Feed
) -> None:
    async with fresh_page(inbox_browser) as page:
        await sign_in(page, inbox_api, "rev-keyboard", Role.REVIEWER)
        link = await review_href(page, feed.unmapped)
        await tab_to(page, f"a[href='{link}']")
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"**{link}")
        await assert_no_phi_in_address_or_title(page)
        # What the reviewer decides on: the line, its value and unit, ranked candidates.
        unmapped = page.locator("section.unmapped")
        await expect(unmapped).to_contain_text("KPL")
        await expect(unmapped).to_contain_text("Potassium plasma")
        await expect(unmapped.locator("dd").nth(1)).to_have_text("4.3")
        await expect(unmapped.locator("dd").nth(2)).to_have_text("mmol/L")
        candidates = page.get_by_role("table", name="Candidate LOINC codes for KPL")
        # Ranked by similarity: the map's potassium concept reads most like the local text.
        await expect(candidates.locator("tbody tr").first).to_contain_text("2823-3")
        await expect(candidates.locator("tbody tr").first).to_contain_text("Potassium")
        await screenshot(page, "review-unmapped-code.png")

        # Take it first, then decide: every step from the keyboard.
        await tab_to(page, "form[action$='/assignment'] button")
        await page.keyboard.press("Enter")
        await expect(page.locator("#assignee")).to_have_text("rev-keyboard")
        await tab_to(page, "input[name='action'][value='approve']")
        await page.keyboard.press("Space")
        await tab_to(page, "#reason")
        await page.keyboard.type("local marker checked with the lab; LOINC request filed")
        await tab_to(page, "form[action$='/decision'] button[type='submit']")
        await page.keyboard.press("Enter")
        await expect(page.get_by_role("status")).to_have_text(
            "Your decision (approve) was recorded."
        )

    engine = inbox_engine
    await engine.wait_for_status(feed.unmapped, "final")
    written: list[str] = await engine.handle(feed.unmapped).query("resources_written")
    [report_ref] = sorted({ref for ref in written if ref.startswith("DiagnosticReport/")})
    report = await engine.fhir.read(*report_ref.split("/"))
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "final"
    history = await engine.handle(feed.unmapped).query("review_history")
    assert (history[-1]["decision"]["reviewer"], history[-1]["decision"]["action"]) == (
        "rev-keyboard",
        "approve",
    )


async def test_the_result_without_an_order_shows_the_held_result_and_candidates(
    inbox_browser: Browser, inbox_api: RunningApi, feed: Feed
) -> None:
    async with fresh_page(inbox_browser) as page:
        await sign_in(page, inbox_api, "rev-orphan", Role.REVIEWER)
        await page.goto(inbox_api.base_url + await review_href(page, feed.orphan))
        await expect(page.get_by_role("heading", level=1)).to_have_text("Result without an order")
        held = page.get_by_role("table", name="Tests and values")
        await expect(held).to_contain_text("Potassium")
        await expect(held).to_contain_text("4.1")
        await expect(page.locator("main")).to_contain_text("Browserpatient, Clara")
        candidates = page.get_by_role("table", name="open order")
        # BRW-7002 is open for the same patient (BRW-7001 may still be closing).
        row = candidates.get_by_role("row").filter(has_text="BRW-7002")
        await expect(row).to_contain_text("yes")
        timeline = row.get_by_role("link", name="timeline")
        assert (await timeline.get_attribute("href") or "").startswith("/ui/exchanges/")
        await row.get_by_role("link", name="BRW-7002").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Unmapped local code")
        await assert_no_phi_in_address_or_title(page)


@pytest.mark.parametrize("viewport", [DESKTOP, TABLET], ids=["1280x800", "820x1180"])
async def test_the_decision_form_is_usable_and_labelled_at_desktop_and_tablet_sizes(
    inbox_browser: Browser, inbox_api: RunningApi, feed: Feed, viewport: dict[str, int]
) -> None:
    async with fresh_page(inbox_browser, viewport) as page:
        await sign_in(page, inbox_api, "rev-sizes", Role.REVIEWER)
        links = [await review_href(page, w) for w in (feed.unmapped_kept, feed.delivery)]
        for link in links:
            await page.goto(inbox_api.base_url + link)
            form = page.locator("form[action$='/decision']")
            # Every control has an accessible name: found by its label.
            controls = form.locator("input:not([type='hidden']), textarea, select")
            for index in range(await controls.count()):
                control = controls.nth(index)
                name = await control.evaluate(
                    "el => [...el.labels].map(l => l.innerText).join(' ').trim()"
                    " || el.getAttribute('aria-label') || ''"
                )
                assert name, await control.evaluate("el => el.outerHTML")
                assert await page.get_by_label(name, exact=True).count() >= 1, name
            await expect(
                form.get_by_label("Reason (kept in the exchange's history)")
            ).to_be_visible()
            await expect(form.get_by_role("button", name="Record decision")).to_be_visible()
            # Nothing wider than the screen: no sideways scrolling to reach a control.
            assert await page.evaluate(
                "() => document.documentElement.scrollWidth <= window.innerWidth"
            )
            for index in range(await controls.count()):
                box = await controls.nth(index).bounding_box()
                assert box is not None and box["x"] >= 0
                assert box["x"] + box["width"] <= viewport["width"]
        # The failed delivery's page at this size: the ACK in words, and the editor.
        await expect(page.locator("main")).to_contain_text("Application reject")
        await expect(page.locator("main")).to_contain_text("Segment sequence error")
        await expect(
            page.get_by_role("textbox", name=re.compile(r"^Corrected message"))
        ).to_be_visible()


async def test_an_invalid_edit_is_refused_and_a_valid_one_reaches_the_partner(
    inbox_browser: Browser,
    inbox_api: RunningApi,
    inbox_engine: Engine,
    inbox_partners: dict[str, Partner],
    feed: Feed,
) -> None:
    billing = inbox_partners["billing"]
    async with fresh_page(inbox_browser) as page:
        await sign_in(page, inbox_api, "rev-edit", Role.REVIEWER)
        await page.goto(inbox_api.base_url + await review_href(page, feed.delivery))
        main = page.locator("main")
        await expect(main).to_contain_text("billing (MLLP)")
        await expect(main).to_contain_text("Application reject")
        await expect(main).to_contain_text("Segment sequence error")
        await expect(main).to_contain_text("PV1 out of place")
        await screenshot(page, "review-failed-delivery.png")
        editor = page.get_by_role("textbox", name=re.compile(r"^Corrected message"))
        sent = await editor.input_value()
        assert sent.startswith("MSH|^~\\&|CAREWEAVE|") and "\nPID|" in sent

        # Without its PID the message is not an ADT^A03 any more: refused, nothing sent.
        await page.get_by_role("radio", name=re.compile(r"^edit:")).check()
        await editor.fill("\n".join(s for s in sent.split("\n") if not s.startswith("PID|")))
        await page.get_by_label("Reason (kept in the exchange's history)").fill("dropped PID")
        await page.get_by_role("button", name="Record decision").click()
        await expect(page.get_by_role("alert")).to_contain_text(
            "The corrected message was not sent: PID"
        )
        pending = await inbox_engine.handle(feed.delivery).query("pending_review")
        assert (
            pending is not None
            and await inbox_engine.handle(feed.delivery).query("review_history") == []
        )
        assert len(await received(billing, feed.delivery_visit)) == 1

        # The form came back as filled in; correct the diagnosis instead.
        await page.get_by_role("radio", name=re.compile(r"^edit:")).check()
        await editor.fill(sent.replace("E11.9^", "E11.65^"))
        await page.get_by_label("Reason (kept in the exchange's history)").fill(
            "diagnosis corrected with the coder"
        )
        await page.get_by_role("button", name="Record decision").click()
        await expect(page.get_by_role("status")).to_have_text("Your decision (edit) was recorded.")

    messages = await wait_received(billing, feed.delivery_visit, 1)
    assert [m["answered"] for m in messages] == ["AR", "AA"]
    assert "E11.65^" in messages[1]["text"] and "E11.9^" not in messages[1]["text"]
    assert messages[1]["control_id"] != messages[0]["control_id"]


async def test_a_signed_out_browser_sees_no_decoded_data_and_no_phi(
    inbox_browser: Browser, inbox_api: RunningApi, feed: Feed
) -> None:
    async with fresh_page(inbox_browser) as reviewer:
        await sign_in(reviewer, inbox_api, "rev-links", Role.REVIEWER)
        links = [
            await review_href(reviewer, workflow_id)
            for workflow_id in (feed.unmapped_kept, feed.orphan)
        ]
        await reviewer.goto(inbox_api.base_url + links[0])
        token = await reviewer.locator("input[name='csrf_token']").first.input_value()
        # Signed out: the same pages are only the sign-in page now.
        await reviewer.get_by_role("button", name="Sign out").click()
        for path in ("/ui/", *links):
            await reviewer.goto(inbox_api.base_url + path)
            assert "/login?next=" in reviewer.url
            await assert_no_secrets(reviewer)

    async with fresh_page(inbox_browser) as stranger:
        for path in ("/ui/", "/ui/inbox/rows", *links):
            await stranger.goto(inbox_api.base_url + path)
            assert "/login?next=" in stranger.url
            await assert_no_secrets(stranger)
        # Deciding or assigning without a session is refused; the review is still pending.
        for action in ("decision", "assignment"):
            answer = await stranger.request.post(
                f"{inbox_api.base_url}{links[0]}/{action}",
                form={"csrf_token": token, "review_id": "r1", "action": "approve", "reason": "x"},
                max_redirects=0,
            )
            assert answer.status in (303, 401, 403), answer.status
        async with httpx.AsyncClient(base_url=inbox_api.base_url) as anonymous:
            api_answer = await anonymous.get("/reviews")
            assert api_answer.status_code == 401
            assert all(secret not in api_answer.text for secret in PHI)


async def assert_no_secrets(page: Page) -> None:
    content = await page.content()
    for secret in (*PHI, "Experimental marker", "Potassium", "ZZX9", "KPL"):
        assert secret not in content, secret
    await assert_no_phi_in_address_or_title(page)


async def test_search_by_an_mrn_finds_that_patients_exchanges_and_opens_their_timeline(
    inbox_browser: Browser, inbox_api: RunningApi, inbox_engine: Engine, feed: Feed
) -> None:
    async with fresh_page(inbox_browser) as page:
        await sign_in(page, inbox_api, "rev-search", Role.REVIEWER)
        await page.get_by_role("link", name="Find exchanges").click()
        await page.get_by_label("Search by").select_option("mrn")
        await page.get_by_label("Value").fill(CLARA.mrn)
        await page.get_by_role("button", name="Find").click()
        # Clara's three lab exchanges (two orders and the orphan result), not Otto's.
        await expect(page.get_by_role("heading", name="3 exchanges found")).to_be_visible()
        await assert_no_phi_in_address_or_title(page)
        assert CLARA.mrn not in await page.evaluate("() => document.location.href")

        links = page.locator("a[href^='/ui/exchanges/']")
        await expect(links).to_have_count(3)
        refs = ExchangeRefs(TEST_KEY_RING)
        found = {
            refs.workflow_id(str(href).removeprefix("/ui/exchanges/"))
            for href in await links.evaluate_all("ls => ls.map(l => l.getAttribute('href'))")
        }
        assert found == {feed.unmapped, feed.unmapped_kept, feed.orphan}

        unmapped_ref = refs.ref(feed.unmapped_kept)
        await page.goto(f"{inbox_api.base_url}/ui/exchanges/{unmapped_ref}")
        timeline = page.locator("table tbody tr")
        await expect(timeline.filter(has_text="ORM^O01 received")).to_have_count(1)
        await expect(timeline.filter(has_text="ORU^R01 received")).to_have_count(1)
        await expect(page.get_by_role("link", name="waiting for a reviewer")).to_be_visible()
        # The messages are decoded for the signed-in reviewer, behind a disclosure.
        result_row = timeline.filter(has_text="ORU^R01 received")
        await result_row.locator("summary").click()
        await expect(result_row.locator("pre")).to_be_visible()
        await expect(result_row.locator("pre")).to_contain_text(CLARA.family)
        await assert_no_phi_in_address_or_title(page)
        await screenshot(page, "exchange.png")
