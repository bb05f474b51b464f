"""Finding exchanges by business keys and reading an exchange's timeline, through the real
MLLP gateway, committer, worker, Temporal dev server and API: real messages in, searches by
what a person would type, and neither Temporal nor the audit trail nor the logs ever hold
the typed value."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from adapters.hl7v2.ack import parse_ack
from models.identity import Role
from models.search import BusinessKeyKind, ExchangeTimeline, TimelineKind
from tests.support.api import RunningApi, running_api
from tests.support.cli import careweave
from tests.support.engine import Engine, mllp_send
from workers import sample_messages as sm

TAG = uuid.uuid4().hex[:6].upper()
PATIENT_1 = sm.SamplePatient(mrn=f"MRN-S1{TAG}")
PATIENT_2 = sm.SamplePatient(mrn=f"MRN-S2{TAG}", family="Otherpatient", given="Bo")
ORDER_A = sm.SampleOrder(f"SRCH-A{TAG}", patient=PATIENT_1)
ORDER_B = sm.SampleOrder(f"SRCH-B{TAG}", patient=PATIENT_2)
ORDER_C = sm.SampleOrder(f"SRCH-C{TAG}", patient=PATIENT_1)
VISIT_A = f"V-S{TAG}"
ACCESSION_A = f"ACC-S{TAG}"
FILLER_A = f"FILL-A{TAG}"
RESULT_CONTROL_ID_A = f"SA{TAG}-R"


def with_visit_and_accession(order_message: str, visit: str, accession: str) -> str:
    """The order with PV1-19 (visit number) and OBR-18 (accession) valued."""
    lines = order_message.split("\r")
    for index, line in enumerate(lines):
        fields = line.split("|")
        if fields[0] == "PV1":
            fields += [""] * (20 - len(fields))
            fields[19] = visit
        elif fields[0] == "OBR":
            fields += [""] * (19 - len(fields))
            fields[18] = accession
        lines[index] = "|".join(fields)
    return "\r".join(lines)


@pytest.fixture(scope="module")
async def api(engine: Engine) -> AsyncIterator[RunningApi]:
    async with running_api(engine) as running:
        yield running


@pytest.fixture(scope="module")
async def exchanges(engine: Engine) -> dict[str, str]:
    """Orders A, B, C (A and C of one patient), then, once A's order is written, A's final
    result, sent over MLLP."""
    ids = {
        name: engine.lab_workflow_id(order.placer_order_number)
        for name, order in (("A", ORDER_A), ("B", ORDER_B), ("C", ORDER_C))
    }
    acks = await mllp_send(
        engine.mllp_port,
        [
            with_visit_and_accession(sm.lab_order(ORDER_A, f"SA{TAG}-O"), VISIT_A, ACCESSION_A),
            sm.lab_order(ORDER_B, f"SB{TAG}-O"),
            sm.lab_order(ORDER_C, f"SC{TAG}-O"),
        ],
    )
    for name in ("A", "B", "C"):
        await engine.wait_for_status(ids[name], "ordered")
    result = sm.lab_result(ORDER_A, RESULT_CONTROL_ID_A, [sm.SODIUM], filler_order_number=FILLER_A)
    acks += await mllp_send(engine.mllp_port, [result])
    assert [parse_ack(ack)[0] for ack in acks] == ["AA"] * 4
    await engine.wait_for_status(ids["A"], "final")
    return ids


async def search(
    http: httpx.AsyncClient, token: str, kind: BusinessKeyKind, value: str, **extra: str
) -> httpx.Response:
    return await http.post(
        "/exchanges/search",
        json={"kind": kind.value, "value": value, **extra},
        headers={"Authorization": f"Bearer {token}"},
    )


async def found_ids(
    http: httpx.AsyncClient,
    token: str,
    kind: BusinessKeyKind,
    value: str,
    expected: set[str],
    **extra: str,
) -> set[str]:
    """The workflow ids a search finds, asked again while visibility catches up (it is
    eventually consistent) until they are `expected` or 20 s passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        answer = await search(http, token, kind, value, **extra)
        assert answer.status_code == 200, answer.text
        ids = {hit["workflow_id"] for hit in answer.json()["exchanges"]}
        if ids == expected or loop.time() > deadline:
            return ids
        await asyncio.sleep(0.3)


async def test_search_by_each_business_key_finds_exactly_its_exchanges(
    engine: Engine, api: RunningApi, exchanges: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = api.token(f"finder-{TAG}", Role.REVIEWER)
    a, b, c = exchanges["A"], exchanges["B"], exchanges["C"]
    searches: list[tuple[BusinessKeyKind, str, set[str]]] = [
        (BusinessKeyKind.MRN, PATIENT_1.mrn, {a, c}),
        (BusinessKeyKind.MRN, PATIENT_2.mrn, {b}),
        (BusinessKeyKind.PLACER, ORDER_A.placer_order_number, {a}),
        (BusinessKeyKind.PLACER, ORDER_B.placer_order_number, {b}),
        # Both arrived with the result, after the exchange had started: added by the
        # workflow's upsert, not by the start.
        (BusinessKeyKind.FILLER, FILLER_A, {a}),
        (BusinessKeyKind.CONTROL_ID, RESULT_CONTROL_ID_A, {a}),
        (BusinessKeyKind.CONTROL_ID, f"SC{TAG}-O", {c}),
        (BusinessKeyKind.ACCESSION, ACCESSION_A, {a}),
        (BusinessKeyKind.VISIT, VISIT_A, {a}),
        # A kind is part of the pseudonym: a placer number searched as a visit finds nothing.
        (BusinessKeyKind.VISIT, ORDER_A.placer_order_number, set()),
    ]
    audit_before = len(api.audit)
    # The gateway's RECEIVE rows name MSH-10 (by design, intake.receive_entry); what is
    # checked is that the searches add no row naming what was typed.
    trail_before = max((row.seq for row in engine.store.audit_log().records()), default=0)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as http:
        for kind, value, expected in searches:
            assert await found_ids(http, token, kind, value, expected) == expected, (kind, value)
        assert await found_ids(
            http, token, BusinessKeyKind.MRN, PATIENT_1.mrn, {a, c}, facility=sm.HOSPITAL
        ) == {a, c}
        assert (
            await found_ids(http, token, BusinessKeyKind.MRN, PATIENT_1.mrn, set(), facility="ELSE")
            == set()
        )
        answer = await search(http, token, BusinessKeyKind.PLACER, ORDER_A.placer_order_number)
    [hit] = answer.json()["exchanges"]
    assert hit["exchange"] == "order-to-result"
    assert hit["exchange_status"] == "final"
    assert hit["facility"] == sm.HOSPITAL
    assert hit["execution_status"] == "RUNNING"  # open for its correction window

    rows = api.audit[audit_before:]
    search_rows = [row for row in rows if row.resource == "exchange-search"]
    assert len(search_rows) >= len(searches) + 3
    assert {row.actor for row in search_rows} == {f"finder-{TAG}"}
    assert any(row.detail == "searched by placer: 1 exchange(s)" for row in search_rows)
    typed = {value for _, value, _ in searches}
    stored = [row for row in engine.store.audit_log().records() if row.seq > trail_before]
    assert len(stored) >= len(search_rows)
    leaks = [
        row.seq
        for row in stored
        for value in typed
        if value in f"{row.exchange} {row.resource} {row.detail}"
    ]
    assert leaks == [], "a typed value reached the audit trail"
    logged = [record.getMessage() for record in caplog.records]
    assert not [line for line in logged for value in typed if value in line]

    # Temporal holds pseudonyms only: no typed value in any search attribute of A.
    described = await engine.handle(a).describe()
    attributes = str(described.raw_description.workflow_execution_info.search_attributes)
    assert not [value for value in typed if value in attributes]


async def test_search_refuses_without_a_token_a_blank_value_or_an_unknown_kind(
    api: RunningApi,
) -> None:
    token = api.token(f"finder2-{TAG}", Role.OPS)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as http:
        anonymous = await http.post("/exchanges/search", json={"kind": "mrn", "value": "X"})
        blank = await search(http, token, BusinessKeyKind.MRN, "   ")
        unknown = await http.post(
            "/exchanges/search",
            json={"kind": "ssn", "value": "1"},
            headers={"Authorization": f"Bearer {token}"},
        )
        as_query = await http.get(
            "/exchanges", params={"mrn": "X"}, headers={"Authorization": f"Bearer {token}"}
        )
    assert anonymous.status_code == 401
    assert blank.status_code == 400
    assert "mrn to search for is empty" in blank.json()["issue"][0]["diagnostics"]
    assert unknown.status_code == 422
    assert unknown.json()["resourceType"] == "OperationOutcome"
    # The value never travels in a URL: there is no GET search.
    assert as_query.status_code in (404, 405)


def position(timeline: ExchangeTimeline, kind: TimelineKind, name_or_type: str) -> int:
    return next(
        index
        for index, entry in enumerate(timeline.entries)
        if entry.kind is kind and name_or_type in (entry.name, entry.message_type)
    )


async def test_timeline_of_a_lab_exchange_lists_messages_and_fhir_writes_in_order(
    engine: Engine, api: RunningApi, exchanges: dict[str, str]
) -> None:
    token = api.token(f"viewer-{TAG}", Role.REVIEWER)
    a = exchanges["A"]
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as http:
        answer = await http.get(
            f"/exchanges/{a}/timeline", headers={"Authorization": f"Bearer {token}"}
        )
        missing = await http.get(
            "/exchanges/order-to-result/GENHOSP/no-such/timeline",
            headers={"Authorization": f"Bearer {token}"},
        )
        anonymous = await http.get(f"/exchanges/{a}/timeline")
    assert answer.status_code == 200, answer.text
    timeline = ExchangeTimeline.model_validate(answer.json())
    assert timeline.exchange == "order-to-result"
    assert timeline.exchange_status == "final"
    order_received = position(timeline, TimelineKind.MESSAGE_RECEIVED, "ORM^O01")
    request_written = position(timeline, TimelineKind.STEP_COMPLETED, "publish_service_request")
    result_received = position(timeline, TimelineKind.MESSAGE_RECEIVED, "ORU^R01")
    result_written = position(timeline, TimelineKind.STEP_COMPLETED, "publish_lab_result")
    assert order_received < request_written < result_received < result_written
    assert [e.at for e in timeline.entries] == sorted(e.at for e in timeline.entries)
    statuses = [e.summary for e in timeline.entries if e.kind is TimelineKind.STATUS_CHANGED]
    assert statuses[-1] == "status final"
    assert "status ordered" in statuses
    steps = [e for e in timeline.entries if e.kind is TimelineKind.STEP_SCHEDULED]
    assert "Write the ServiceRequest" in [e.summary for e in steps]
    audited = [e for e in timeline.entries if e.kind is TimelineKind.AUDIT]
    assert {e.name for e in audited} >= {"receive", "push"}
    received = [e for e in timeline.entries if e.kind is TimelineKind.MESSAGE_RECEIVED]
    assert all(e.control_id_key and TAG not in e.control_id_key for e in received)
    body = answer.text
    for phi in (PATIENT_1.mrn, PATIENT_1.family, ORDER_A.placer_order_number, FILLER_A):
        assert phi not in body
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert anonymous.status_code == 401
    viewed = [row for row in api.audit if row.resource == "exchange-timeline"]
    assert viewed and viewed[-1].exchange == a


async def test_careweave_find_lists_the_exchanges_of_a_typed_key(
    engine: Engine,
    api: RunningApi,
    exchanges: dict[str, str],
    temporal_client: Client,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(api.token(f"cli-finder-{TAG}", Role.OPS))
    env = {"CAREWEAVE_API_URL": api.base_url, "CAREWEAVE_TOKEN_FILE": str(token_file)}

    async def run(*args: str) -> tuple[int, str]:
        return await careweave(engine, temporal_client, *args, env=env)

    code, output = await run("find", "--placer", ORDER_B.placer_order_number)
    assert code == 0, output
    assert exchanges["B"] in output
    assert exchanges["A"] not in output
    assert "Exchanges found by placer: 1" in output
    code, output = await run("find", "--mrn", PATIENT_1.mrn, "--facility", sm.HOSPITAL)
    assert code == 0, output
    assert exchanges["A"] in output and exchanges["C"] in output
    code, output = await run("find", "--mrn", "x", "--placer", "y")
    assert code == 1
    assert "exactly one of --mrn" in output
