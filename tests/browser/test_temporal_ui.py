"""The operator's Temporal UI, in Chromium, as README "Decoded payloads in the Temporal UI"
says to use it: sign in at the API, open its /temporal/. A real lab order goes through the
MLLP gateway first, so the workflow's payloads are the product's encrypted ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

import pytest
from playwright.async_api import Locator, Page, Response, expect

from exchanges.order_to_result import lab_workflow_id
from models.audit import AuditAction, AuditOutcome
from tests.browser.conftest import BrowserStack
from tests.support.engine import mllp_send
from workers import sample_messages as sm

pytestmark = [pytest.mark.integration, pytest.mark.browser]

Screenshot = Callable[[Page | Locator, str], Awaitable[None]]
ORDER = sm.SampleOrder("UIBR-3001")
# Clear text that only the decoded order message carries (PID-3, PID-5, OBR-4.2): the
# workflow id and search attributes hold none of it.
MESSAGE_CLEAR_TEXT = (ORDER.patient.mrn, ORDER.patient.family, ORDER.text)
UI_PATH = "/temporal"
# The UI loads the history and decodes it in several rounds; a busy 2-core machine needs
# more than Playwright's 5 s default for a page to settle.
expect.set_options(timeout=30_000)


def workflow_id(ui_stack: BrowserStack) -> str:
    """The order's exchange, as routed: its id carries the placer number's pseudonym."""
    settings = ui_stack.stack.settings
    return lab_workflow_id(
        sm.HOSPITAL, ORDER.placer_order_number, settings.resolved_pseudonym_key()
    )


def workflow_page(ui_stack: BrowserStack, base_url: str) -> str:
    workflow = quote(workflow_id(ui_stack), safe="")
    return f"{base_url}{UI_PATH}/namespaces/default/workflows/{workflow}"


def ui_api(ui_stack: BrowserStack, command: str) -> str:
    """A path of the UI's HTTP API (through the API's proxy) for the test's workflow."""
    workflow = quote(workflow_id(ui_stack), safe="")
    return f"{ui_stack.api_url}{UI_PATH}/api/v1/namespaces/default/workflows/{workflow}{command}"


@pytest.fixture(scope="module", autouse=True)
async def lab_order_received(ui_stack: BrowserStack) -> None:
    """The order arrives as a hospital would send it: MLLP, committed, then AA."""
    [ack] = await mllp_send(ui_stack.stack.gateway.port, [sm.lab_order(ORDER, "UIBR-3001-O")])
    assert "MSA|AA|" in ack


async def sign_in(page: Page, ui_stack: BrowserStack) -> None:
    """Open the workflow in the UI; the API asks for the sign-in and comes back to it."""
    await page.goto(workflow_page(ui_stack, ui_stack.api_url))
    await expect(page.get_by_role("heading", name="Careweave sign-in")).to_be_visible()
    await page.get_by_label("Username").fill(ui_stack.operator.username)
    await page.get_by_label("Password").fill(ui_stack.operator.password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(workflow_page(ui_stack, ui_stack.api_url))


async def open_signal_event(page: Page) -> Locator:
    """Event History with the order_message signal opened: its input is the message."""
    await page.get_by_role("tab", name="Event History").click()
    row = page.get_by_test_id("event-summary-row").filter(has_text="Workflow Execution Signaled")
    await row.get_by_text("Workflow Execution Signaled").click()
    opened = row.locator("button[aria-expanded=true]")
    details = page.locator(f"#{await opened.get_attribute('aria-controls')}")
    await expect(details).to_contain_text("order_message")
    return details


async def test_signed_in_operator_sees_the_order_decoded(
    ui_stack: BrowserStack, page: Page, screenshot: Screenshot
) -> None:
    await sign_in(page, ui_stack)

    # The workflow's input (the exchange's start input) on the summary, decoded.
    await expect(page.get_by_text("placer_namespace")).to_be_visible()
    await screenshot(page, "temporal-ui-decoded.png")
    # The order message itself, from the signal that delivered it.
    signal = await open_signal_event(page)
    for clear_text in MESSAGE_CLEAR_TEXT:
        await expect(signal).to_contain_text(clear_text)
    await screenshot(signal, "temporal-ui-decoded-message.png")

    decodes = [
        row
        for row in ui_stack.stack.store.audit_log().records()
        if row.action == AuditAction.DECODE and row.actor == ui_stack.operator.username
    ]
    assert decodes and all(row.outcome == AuditOutcome.SUCCESS for row in decodes)


async def test_ui_offers_no_write_action_and_the_proxy_refuses_them(
    ui_stack: BrowserStack, page: Page, screenshot: Screenshot
) -> None:
    await sign_in(page, ui_stack)
    await expect(page.get_by_text("placer_namespace")).to_be_visible()
    await expect(page.get_by_role("button", name="Request Cancellation")).to_be_disabled()
    await expect(page.get_by_role("button", name="More Actions")).to_be_disabled()
    # UI 2.54.1 keeps the commands in the (disabled) More Actions menu, each disabled.
    for command in ("terminate", "reset", "signal", "update"):
        items = await page.get_by_test_id(f"{command}-button").all()
        assert items, f"no {command} item: has the UI's menu changed?"
        for item in items:
            await expect(item).to_have_attribute("aria-disabled", "true")
    await screenshot(page, "temporal-ui-read-only.png")

    # The same commands sent straight to the proxy with the signed-in browser's cookie.
    commands = {
        "/terminate": {"reason": "browser test"},
        "/cancel": {},
        "/signal/order_message": {},
        "/update/decide_review": {},
        "/reset": {"reason": "browser test"},
    }
    for command, body in commands.items():
        answer = await page.request.post(ui_api(ui_stack, command), data=body)
        assert answer.status == 403, (command, answer.status)
    batch = await page.request.post(
        f"{ui_stack.api_url}{UI_PATH}/api/v1/namespaces/default/batch-operations/browser-test",
        data={"visibilityQuery": "ExecutionStatus = 'Running'", "terminationOperation": {}},
    )
    assert batch.status == 403
    # A read-only query still passes (the UI's Call Stack tab).
    stack_trace = await page.request.post(ui_api(ui_stack, "/query/__stack_trace"))
    assert stack_trace.status != 403

    refused = [
        row
        for row in ui_stack.stack.store.audit_log().records(exchange=workflow_id(ui_stack))
        if row.action == AuditAction.WORKFLOW_COMMAND
    ]
    assert len(refused) == len(commands)
    assert {row.outcome for row in refused} == {AuditOutcome.REFUSED}
    assert {row.actor for row in refused} == {ui_stack.operator.username}
    described = await ui_stack.stack.client.get_workflow_handle(workflow_id(ui_stack)).describe()
    assert described.status is not None and described.status.name == "RUNNING"


async def test_signed_out_browser_gets_the_sign_in_and_only_ciphertext(
    ui_stack: BrowserStack, page: Page, screenshot: Screenshot
) -> None:
    await page.goto(f"{ui_stack.api_url}{UI_PATH}/")
    await expect(page.get_by_role("heading", name="Careweave sign-in")).to_be_visible()
    assert (await page.request.get(f"{ui_stack.api_url}{UI_PATH}/api/v1/settings")).status == 401
    assert (await page.request.get(ui_api(ui_stack, ""))).status == 401

    # The dev server's own listener (loopback) serves the UI without Careweave's sign-in:
    # its codec call reaches the API without a session and is refused.
    codec_answers: list[int] = []

    def record_codec(response: Response) -> None:
        if "/codec/decode" in response.url:
            codec_answers.append(response.status)

    page.on("response", record_codec)
    await page.goto(workflow_page(ui_stack, ui_stack.raw_ui_url))
    codec_failed = page.locator("#content").get_by_text("Codec Server could not connect")
    await expect(codec_failed).to_be_visible()
    await screenshot(page, "temporal-ui-signed-out.png")
    signal = await open_signal_event(page)
    await screenshot(signal, "temporal-ui-signed-out-message.png")
    assert codec_answers and set(codec_answers) == {401}
    for clear_text in MESSAGE_CLEAR_TEXT:
        await expect(page.locator("body")).not_to_contain_text(clear_text)
