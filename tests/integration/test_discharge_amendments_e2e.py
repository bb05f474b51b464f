"""Discharge sync after the discharge, end to end against the real FHIR server, the real
Temporal dev server and the npm MLLP partners: an A08 that amends a diagnosis without
PV1-45 keeps the Encounter finished; an A08 that comes after the exchange closed waits
for a reviewer, who forwards or dismisses it. The exchange closes after CLOSE_AFTER seconds
of quiet here (7 days by default).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from exchanges import discharge_sync
from models.review import ReviewAction, ReviewDecision
from tests.support.discharge import (
    discharge_id,
    received,
    running_discharge_engine,
    send,
    stay,
    triggers,
    wait_condition_codes,
    wait_received,
)
from tests.support.engine import Engine
from tests.support.partner import Partner
from workers import sample_messages as sm

CLOSE_AFTER = 4.0
AMENDED_DIAGNOSES = (
    sm.SampleDiagnosis("1", "I10", "Essential (primary) hypertension", "A"),
    sm.SampleDiagnosis("2", "E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
)


@pytest.fixture(scope="module")
async def amendments_engine(
    temporal_client: Client,
    fhir_base_url: str,
    partners: dict[str, Partner],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    async with running_discharge_engine(
        temporal_client,
        fhir_base_url,
        partners,
        tmp_path_factory.mktemp("routing"),
        task_queue="careweave-test-discharge-amendments",
        discharge_close_after_seconds=CLOSE_AFTER,
    ) as engine:
        yield engine


async def test_amendment_without_pv1_45_keeps_the_encounter_finished(
    amendments_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = amendments_engine
    discharged = stay("V-7001", "MRN7001")
    amended = stay("V-7001", "MRN7001", diagnoses=AMENDED_DIAGNOSES)
    update = sm.adt_event(amended, "DS-7001-2", "A08", discharge_fields=False)
    assert "|20261125094500" not in update  # no PV1-45, no PV1-36
    await send(engine, sm.adt_event(discharged, "DS-7001-1", "A03"), update)

    billing = await wait_received(partners["billing"], "V-7001", 2)
    assert triggers(billing) == ["A03", "A08"]
    assert "E11.65" in billing[-1]["text"]

    # The A08 was written (the Condition amended in place) ...
    found = await wait_condition_codes(engine, "V-7001", ["E11.65", "I10"])
    # ... and its full PUT of the Encounter kept the discharge the A03 wrote.
    assert found["status"] == "finished"
    assert found["period"]["end"].startswith("2026-11-25")
    assert found["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"
    # Written by the mapping new exchanges start on (v2's rule is in every later version).
    assert found["meta"]["tag"][0]["code"] == f"adt-{discharge_sync.EXCHANGE.mapping_version}"


async def discharge_then_close(engine: Engine, partners: dict[str, Partner], visit: str) -> None:
    """A03 delivered to billing, then the exchange closes after its quiet period."""
    await send(engine, sm.adt_event(stay(visit, f"MRN{visit[2:]}"), f"DS-{visit}-1", "A03"))
    await wait_received(partners["billing"], visit, 1)
    handle = engine.handle(discharge_id(visit))
    for _ in range(int(CLOSE_AFTER * 10) + 100):
        if (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the discharge exchange of {visit} did not close")


def late_amendment(visit: str) -> str:
    amended = stay(visit, f"MRN{visit[2:]}", diagnoses=AMENDED_DIAGNOSES)
    return sm.adt_event(amended, f"DS-{visit}-2", "A08", discharge_fields=False)


async def decide(engine: Engine, visit: str, action: ReviewAction) -> dict[str, object]:
    pending = await engine.wait_for_review(discharge_id(visit))
    await engine.decide_review(
        discharge_id(visit),
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=action,
            reason="coder amended the final diagnosis",
            reviewer="him-1",
        ),
    )
    return pending


async def test_late_amendment_waits_for_a_reviewer_who_forwards_it(
    amendments_engine: Engine, partners: dict[str, Partner], caplog: pytest.LogCaptureFixture
) -> None:
    engine = amendments_engine
    await discharge_then_close(engine, partners, "V-7002")

    with caplog.at_level(logging.WARNING):
        await send(engine, late_amendment("V-7002"))
        pending = await engine.wait_for_review(discharge_id("V-7002"))
    assert pending["reason"] == "update-after-close"
    assert "no open discharge" in str(pending["summary"])
    # Held, not dropped and not sent unseen.
    assert triggers(await received(partners["billing"], "V-7002")) == ["A03"]
    warnings = [r.getMessage() for r in caplog.records if "exchange closed" in r.getMessage()]
    assert warnings, [r.getMessage() for r in caplog.records]
    assert not any("V-7002" in w or "MRN7002" in w for w in warnings)  # no PHI in the log

    await decide(engine, "V-7002", ReviewAction.APPROVE)
    billing = await wait_received(partners["billing"], "V-7002", 2)
    assert triggers(billing) == ["A03", "A08"]
    # The new run recalled the closed run's discharge: the Encounter stays finished.
    found = await wait_condition_codes(engine, "V-7002", ["E11.65", "I10"])
    assert found["status"] == "finished"
    assert found["period"]["end"].startswith("2026-11-25")
    assert found["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"


async def test_late_amendment_dismissed_by_the_reviewer_is_not_sent(
    amendments_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = amendments_engine
    await discharge_then_close(engine, partners, "V-7003")
    await send(engine, late_amendment("V-7003"))
    await decide(engine, "V-7003", ReviewAction.REJECT)
    routed = await engine.handle(discharge_id("V-7003")).query("routed_events")
    assert [(r["subscription"], r["note"]) for r in routed] == [
        (None, "A08 after the discharge exchange closed: dismissed")
    ]
    await asyncio.sleep(1.0)
    assert triggers(await received(partners["billing"], "V-7003")) == ["A03"]


async def test_update_during_the_stay_asks_nobody(
    amendments_engine: Engine, partners: dict[str, Partner]
) -> None:
    # Most A08s come before any discharge: they must not become review items.
    engine = amendments_engine
    await send(engine, late_amendment("V-7004"))
    handle = engine.handle(discharge_id("V-7004"))
    routed: list[dict[str, object]] = []
    for _ in range(100):
        routed = await handle.query("routed_events")
        if routed:
            break
        await asyncio.sleep(0.2)
    assert [r["note"] for r in routed] == ["A08 while not discharged: not part of discharge sync"]
    assert await handle.query("pending_review") is None
    assert await received(partners["billing"], "V-7004") == []
