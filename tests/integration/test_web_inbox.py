"""The reviewer inbox's pages over real HTTP against real exchanges on the dev server:
sign-in, the list, a review page, and decisions through the form (CSRF, roles, races).
The same flows in a real browser are in tests/browser/."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from exchanges.order_to_result import EXCHANGE as LAB_EXCHANGE
from models.audit import AuditAction, AuditOutcome
from models.identity import Role
from tests.integration.test_api import pending_exchange
from tests.support.api import RunningApi, running_api
from tests.support.engine import TEST_KEY_RING, Engine, mllp_send
from workers import sample_messages as sm
from workers.api.refs import ExchangeRefs
from workflows import search_attributes as sa

PASSWORD = "a long web reviewer password"


@pytest.fixture(scope="module")
async def api(engine: Engine) -> AsyncIterator[RunningApi]:
    async with running_api(engine) as running:
        yield running


@contextlib.asynccontextmanager
async def signed_in_browser(
    api: RunningApi, user: str, *roles: Role
) -> AsyncIterator[httpx.AsyncClient]:
    api.users.add(user, PASSWORD, roles)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as browser:
        answer = await browser.post(
            "/login", data={"username": user, "password": PASSWORD, "next": "/ui/"}
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/ui/"
        yield browser


def link_to(page_html: str, workflow_id: str) -> str:
    """The page's link to this exchange's review (the session's dev server holds other
    tests' pending reviews too). References are sealed with a fresh nonce each time, so a
    test finds its exchange by opening them with the test key ring."""
    refs = ExchangeRefs(TEST_KEY_RING)
    for ref in re.findall(r'href="/ui/reviews/([^"/?]+)"', page_html):
        if refs.workflow_id(ref) == workflow_id:
            return f"/ui/reviews/{ref}"
    raise AssertionError(f"the page links no review of {workflow_id}")


def row_of(page_html: str, workflow_id: str) -> str:
    link = link_to(page_html, workflow_id)
    return page_html.split(f'href="{link}"')[1].split("</tr>")[0]


def csrf_of(page_html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page_html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


async def test_pages_need_a_session_and_come_back_after_sign_in(api: RunningApi) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as anonymous:
        answer = await anonymous.get("/ui/")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/login?next=/ui/"
        answer = await anonymous.get("/ui/inbox/rows")
        assert answer.status_code == 303
        # Sign-in never sends a browser to another site.
        for elsewhere in ("//evil.test/x", "https://evil.test/", "/\\evil.test"):
            api.users.add("rev-next", PASSWORD, [Role.REVIEWER])
            answer = await anonymous.post(
                "/login", data={"username": "rev-next", "password": PASSWORD, "next": elsewhere}
            )
            assert answer.status_code == 303
            assert answer.headers["location"] == "/ui/"


async def test_a_reviewer_decides_from_the_inbox_and_a_second_decision_is_told_who_won(
    engine: Engine, api: RunningApi
) -> None:
    workflow_id, review_id = await pending_exchange(engine, "WEB-6001")
    async with signed_in_browser(api, "rev-web", Role.REVIEWER) as browser:
        inbox = await browser.get("/ui/")
        assert inbox.status_code == 200
        assert "Unmapped local code" in inbox.text
        # Opaque references only: neither the workflow id nor the order number is shown.
        assert "WEB-6001" not in inbox.text and workflow_id not in inbox.text
        link = link_to(inbox.text, workflow_id)
        assert "WEB-6001" not in link

        page = await browser.get(link)
        assert page.status_code == 200
        assert "ZZX9" in page.text  # the unmapped local code the reviewer decides about
        assert "<title>Review · Careweave</title>" in page.text
        token = csrf_of(page.text)
        form = {"review_id": review_id, "action": "approve", "reason": "checked with the lab"}

        # A form without this session's token, or from another origin, changes nothing.
        for refused in (
            await browser.post(f"{link}/decision", data=form),
            await browser.post(f"{link}/decision", data={**form, "csrf_token": "forged"}),
            await browser.post(
                f"{link}/decision",
                data={**form, "csrf_token": token},
                headers={"Origin": "http://evil.test"},
            ),
        ):
            assert refused.status_code == 403, refused.text
        assert (await engine.handle(workflow_id).query("pending_review"))["review_id"] == review_id

        decided = await browser.post(f"{link}/decision", data={**form, "csrf_token": token})
        assert decided.status_code == 303, decided.text
        assert decided.headers["location"] == f"{link}?decided=approve"
        await engine.wait_for_status(workflow_id, "final")
        history = await engine.handle(workflow_id).query("review_history")
        assert history[-1]["decision"]["reviewer"] == "rev-web"

        again = await browser.post(f"{link}/decision", data={**form, "csrf_token": token})
        assert again.status_code == 409
        assert "already decided by rev-web (approve)" in again.text

    decisions = [
        (e.actor, e.outcome)
        for e in api.audit
        if e.action is AuditAction.REVIEW_DECISION and e.exchange == workflow_id
    ]
    assert ("rev-web", AuditOutcome.SUCCESS) in decisions
    views = [e for e in api.audit if e.action is AuditAction.ACCESS and e.exchange == workflow_id]
    assert views, "the review page view is an audit row"


async def test_ops_may_look_but_not_decide_and_unknown_links_are_404(
    engine: Engine, api: RunningApi
) -> None:
    workflow_id, review_id = await pending_exchange(engine, "WEB-6002")
    async with signed_in_browser(api, "ops-web", Role.OPS) as browser:
        inbox = await browser.get("/ui/")
        link = link_to(inbox.text, workflow_id)
        page = await browser.get(link)
        assert page.status_code == 200
        assert "Only reviewers decide" in page.text
        answer = await browser.post(
            f"{link}/decision",
            data={"review_id": review_id, "action": "approve", "reason": "x"},
        )
        assert answer.status_code == 403
        assert (await browser.get("/ui/reviews/k1.not-a-reference")).status_code == 404
    assert (await engine.handle(workflow_id).query("pending_review"))["review_id"] == review_id


async def test_the_unmapped_code_page_shows_the_line_and_ranked_loinc_candidates_and_assigns(
    engine: Engine, api: RunningApi
) -> None:
    workflow_id, review_id = await pending_exchange(engine, "WEB-6003")
    async with signed_in_browser(api, "rev-assign", Role.REVIEWER) as browser:
        inbox = await browser.get("/ui/")
        link = link_to(inbox.text, workflow_id)
        assert "<td>nobody</td>" in row_of(inbox.text, workflow_id)
        page = await browser.get(link)
        # From the workflow's context, decoded: code, text, value, unit, map version.
        # The mapping version new lab exchanges start on.
        version = f"<strong>{LAB_EXCHANGE.mapping_version}</strong>"
        for shown in ("ZZX9", "Experimental marker", ">12<", "U/L", version):
            assert shown in page.text, shown
        assert "Candidate LOINC codes for ZZX9" in page.text
        assert "Testpatient" not in page.text  # an unmapped code needs no patient

        token = csrf_of(page.text)
        refused = await browser.post(f"{link}/assignment", data={"review_id": review_id})
        assert refused.status_code == 403
        taken = await browser.post(
            f"{link}/assignment", data={"review_id": review_id, "csrf_token": token}
        )
        assert taken.status_code == 303
        page = await browser.get(taken.headers["location"])
        assert '<dd id="assignee">rev-assign</dd>' in page.text
        assert "Assign to me" not in page.text  # already theirs
        rows = await browser.get("/ui/inbox/rows")
        assert "<td>rev-assign</td>" in row_of(rows.text, workflow_id)
        stale = await browser.post(
            f"{link}/assignment", data={"review_id": "r99", "csrf_token": token}
        )
        assert stale.status_code == 409
    assignments = [
        (e.actor, e.outcome)
        for e in api.audit
        if e.action is AuditAction.REVIEW_ASSIGNMENT and e.exchange == workflow_id
    ]
    assert assignments == [
        ("rev-assign", AuditOutcome.SUCCESS),
        ("rev-assign", AuditOutcome.REFUSED),
    ]


async def test_a_result_without_its_order_shows_the_held_result_and_open_orders(
    engine: Engine, api: RunningApi
) -> None:
    patient = sm.SamplePatient(mrn="MRN6004", family="Heldresult", given="Ida")
    open_order = sm.SampleOrder("WEB-6004-A", patient=patient, text="Electrolytes")
    orphan = sm.SampleOrder("WEB-6004-B", patient=patient)
    await mllp_send(
        engine.mllp_port,
        [
            sm.lab_order(open_order, "WEB-6004-O"),
            sm.lab_result(orphan, "WEB-6004-R", [sm.SODIUM, sm.POTASSIUM]),
        ],
    )
    orphan_id = engine.lab_workflow_id("WEB-6004-B")
    await engine.wait_for_review(orphan_id)
    async with signed_in_browser(api, "rev-orphan", Role.REVIEWER) as browser:
        inbox = await browser.get("/ui/")
        page = await browser.get(link_to(inbox.text, orphan_id))
        assert page.status_code == 200
        held = page.text.split("Candidate open orders")[0]
        for shown in ("Heldresult, Ida", "MRN6004", "Sodium", "140", "Potassium", "4.1"):
            assert shown in held, shown
        candidates = page.text.split("Candidate open orders")[1]
        assert "WEB-6004-A" in candidates and "Electrolytes" in candidates
        same_patient_row = candidates.split("WEB-6004-A")[1].split("</tr>")[0]
        assert "<td>yes</td>" in same_patient_row
        # The candidate links to its own page by an opaque reference.
        candidate_link = link_to(candidates, engine.lab_workflow_id("WEB-6004-A"))
        assert "WEB-6004" not in candidate_link
        assert (await browser.get(candidate_link)).status_code == 200
        assert "<title>Review · Careweave</title>" in page.text


async def test_find_a_patients_exchanges_by_mrn_and_read_one_exchange_page(
    engine: Engine, api: RunningApi
) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    patient = sm.SamplePatient(mrn=f"MRN-W{tag}", family="Webfinder")
    mine = sm.SampleOrder(f"WEBS-A{tag}", patient=patient)
    other = sm.SampleOrder(f"WEBS-B{tag}", patient=sm.SamplePatient(mrn=f"MRN-X{tag}"))
    await mllp_send(
        engine.mllp_port,
        [sm.lab_order(mine, f"WA{tag}-O"), sm.lab_order(other, f"WB{tag}-O")],
    )
    await engine.wait_for_status(engine.lab_workflow_id(mine.placer_order_number), "ordered")
    await engine.wait_for_status(engine.lab_workflow_id(other.placer_order_number), "ordered")

    async with signed_in_browser(api, "rev-finder", Role.REVIEWER) as browser:
        form = await browser.get("/ui/search")
        assert form.status_code == 200
        token = csrf_of(form.text)
        # A search in the address bar searches nothing: the value would be in the URL.
        assert patient.mrn not in (await browser.get(f"/ui/search?value={patient.mrn}")).text

        found = await browser.post(
            "/ui/search", data={"kind": "mrn", "value": patient.mrn, "csrf_token": token}
        )
        assert found.status_code == 200, found.text
        assert "1 exchange found" in found.text
        links = re.findall(r'href="(/ui/exchanges/[^"]+)"', found.text)
        assert len(links) == 1
        assert mine.placer_order_number not in links[0]

        refused = await browser.post("/ui/search", data={"kind": "mrn", "value": patient.mrn})
        assert refused.status_code == 403  # no CSRF token: not one of our pages

        exchange = await browser.get(links[0])
        assert exchange.status_code == 200, exchange.text
        assert "<title>Exchange · Careweave</title>" in exchange.text
        assert "ORM^O01 received" in exchange.text
        # Decoded for the signed-in reviewer: the message itself, patient and all.
        assert "Webfinder" in exchange.text and other.placer_order_number not in exchange.text

    searches = [e for e in api.audit if e.resource == "web-exchange-search"]
    assert searches and searches[-1].detail == "searched by mrn: 1 exchange(s)"
    assert all(patient.mrn not in (e.detail or "") for e in api.audit)


async def test_an_exchange_whose_worker_does_not_answer_is_counted_not_dropped(
    engine: Engine, api: RunningApi
) -> None:
    stranded_id = f"stranded/{uuid.uuid4().hex[:8]}"
    # Marked pending, on a task queue no worker polls: its review cannot be read.
    stranded = await engine.client.start_workflow(
        "NoWorkerRunsThis",
        id=stranded_id,
        task_queue=f"nobody-polls-{uuid.uuid4().hex[:6]}",
        search_attributes=TypedSearchAttributes([SearchAttributePair(sa.REVIEW_STATE, "pending")]),
    )
    try:
        token = api.token("rev-stranded", Role.REVIEWER)
        async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as http:
            for _ in range(50):  # visibility is eventually consistent
                listed = await http.get("/reviews", headers={"Authorization": f"Bearer {token}"})
                if stranded_id in listed.json()["unreadable"]:
                    break
                await asyncio.sleep(0.2)
            assert stranded_id in listed.json()["unreadable"]
            assert stranded_id not in {item["workflow_id"] for item in listed.json()["reviews"]}
        async with signed_in_browser(api, "rev-stranded-web", Role.REVIEWER) as browser:
            inbox = await browser.get("/ui/")
            assert re.search(r"\d+ more exchanges?\s+waiting for a reviewer could not", inbox.text)
    finally:
        await stranded.terminate("test over")
