"""Ordered delivery's review and recovery paths end to end: discharge events travel gateway
-> Temporal -> worker -> the partner systems (partners/partner.js, steered per patient)
and the FHIR server, and what a reviewer decides is checked against what the partner
actually received, the delivery log, the DeliveryAlert search attribute and the audit
trail. Each test uses its own patient (MRN60xx), so its queues are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from adapters.fhir import FhirClient
from models.audit import AuditAction
from models.delivery import DeliveryState
from models.identity import Role
from models.records import AuditRecord
from models.review import ReviewAction, ReviewDecision
from tests.histories.record import decoded_history
from tests.replay.test_histories import replayer
from tests.support.api import running_api
from tests.support.discharge import (
    PSEUDONYM_KEY,
    delivery_id,
    patient_key,
    received,
    send,
    stay,
    triggers,
    wait_alert,
    wait_delivery_log,
    wait_received,
)
from tests.support.engine import Engine, audit_rows, running_engine
from tests.support.fhir_server import fhir_server_process, free_port, running_fhir_server
from tests.support.history import local_attempts
from tests.support.partner import Partner
from workers import sample_messages as sm
from workflows.ordered_delivery import OrderedDelivery


async def decide(
    engine: Engine,
    queue_id: str,
    review_id: object,
    action: ReviewAction,
    reason: str,
    **extra: Any,
) -> None:
    await engine.decide_review(
        queue_id,
        ReviewDecision(
            review_id=str(review_id), action=action, reason=reason, reviewer="ops-1", **extra
        ),
    )


def delivery_rows(rows: list[AuditRecord], resource: str) -> list[tuple[str, str]]:
    """(action, detail) of the rows about one kind of delivery to one destination."""
    return [(row.action, row.detail or "") for row in rows if row.resource == resource]


async def test_a_skip_clears_the_alert_and_the_next_event_is_delivered(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    billing = partners["billing"]
    queue_id = delivery_id("billing", "MRN6001")
    patient_stay = stay("V-6001", "MRN6001")
    # "Record locked" is temporary: retried until the budget (5) is spent, then review.
    await billing.aset_mode("AE", code="206", text="Record locked", patient_id="MRN6001")
    try:
        await send(engine, sm.adt_event(patient_stay, "DS-6001-1", "A03"))
        pending = await engine.wait_for_review(queue_id, timeout=40)
        await wait_alert(engine, queue_id, "failing")
    finally:
        await billing.aset_mode("AA")

    reason = "billing keyed this discharge in from the downtime form"
    async with (
        running_api(engine) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=60) as http,
    ):
        answer = await http.post(
            f"/reviews/{queue_id}/decision",
            json={"review_id": pending["review_id"], "action": "skip", "reason": reason},
            headers={"Authorization": f"Bearer {api.token('rev-6001', Role.REVIEWER)}"},
        )
        assert answer.status_code == 200, answer.text
    # The queue is empty and nothing is held: not "failing" until the queue closes.
    await wait_alert(engine, queue_id, "ok", timeout=10)

    await send(engine, sm.adt_event(patient_stay, "DS-6001-2", "A13"))
    messages = await wait_received(billing, "V-6001", 1)
    assert [(m["message_type"].split("^")[1], m["answered"]) for m in messages] == [
        ("A03", "AE")
    ] * 5 + [("A13", "AA")]
    log = await wait_delivery_log(engine, queue_id, 2)
    assert [(e["outcome"], e["attempts"], e["detail"]) for e in log] == [
        ("skipped", 5, reason),
        ("delivered", 1, f"AA {messages[-1]['control_id']}"),
    ]
    history = await engine.handle(queue_id).query("review_history")
    assert [(h["decision"]["action"], h["decision"]["reason"]) for h in history] == [
        ("skip", reason)
    ]
    assert history[0]["decision"]["reviewer"] == "rev-6001"
    decisions = [
        row
        for row in engine.store.audit_log().records(exchange=queue_id)
        if row.action == AuditAction.REVIEW_DECISION
    ]
    assert [(row.actor, row.outcome, row.detail) for row in decisions] == [
        ("rev-6001", "success", f"skip {pending['review_id']}")
    ]


async def test_an_edited_message_is_sent_with_its_own_control_id_and_keeps_the_order(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    billing = partners["billing"]
    queue_id = delivery_id("billing", "MRN6002")
    first = stay("V-6002", "MRN6002")
    corrected = stay(
        "V-6002",
        "MRN6002",
        diagnoses=(sm.SampleDiagnosis("1", "J18.9", "Pneumonia, unspecified organism"),),
    )
    # AR 100 (segment sequence error) is not temporary: review on the first answer.
    await billing.aset_mode("AR", code="100", times=1, patient_id="MRN6002")
    await send(
        engine,
        sm.adt_event(first, "DS-6002-1", "A03"),
        sm.adt_event(first, "DS-6002-2", "A13"),
    )
    pending = await engine.wait_for_review(queue_id, timeout=40)
    assert ReviewAction.EDIT in pending["actions"]
    edited = sm.adt_event(corrected, "DS-6002-1", "A03")
    await decide(
        engine,
        queue_id,
        pending["review_id"],
        ReviewAction.EDIT,
        "diagnosis corrected with the coder",
        edited_message=edited,
    )

    messages = await wait_received(billing, "V-6002", 2)
    assert [(m["message_type"].split("^")[1], m["answered"]) for m in messages] == [
        ("A03", "AR"),
        ("A03", "AA"),
        ("A13", "AA"),
    ]
    rejected, resent, cancel = messages
    # The partner got the reviewer's text, readdressed, under a new MSH-10.
    assert "DG1|1||J18.9^" in resent["text"] and "E11.9" not in resent["text"]
    assert "E11.9" in rejected["text"]
    assert resent["text"].split("\r")[0].split("|")[4] == "BILLING"
    assert len({rejected["control_id"], resent["control_id"], cancel["control_id"]}) == 3
    log = await wait_delivery_log(engine, queue_id, 2)
    assert [(e["outcome"], e["attempts"]) for e in log] == [("edited", 2), ("delivered", 1)]
    history = await engine.handle(queue_id).query("review_history")
    assert history[0]["decision"]["action"] == "edit"
    assert history[0]["decision"]["edited_message"] == edited


@pytest.mark.parametrize(
    ("mrn", "answer", "code"), [("MRN6003", "AR", "100"), ("MRN6013", "AE", "101")]
)
async def test_a_lasting_refusal_goes_to_review_at_once_and_the_retry_is_audited(
    discharge_engine: Engine, partners: dict[str, Partner], mrn: str, answer: str, code: str
) -> None:
    engine = discharge_engine
    billing = partners["billing"]
    visit = f"V-{mrn[3:]}"
    queue_id = delivery_id("billing", mrn)
    await billing.aset_mode(answer, code=code, text="Not accepted", times=1, patient_id=mrn)
    await send(engine, sm.adt_event(stay(visit, mrn), f"DS-{mrn}-1", "A03"))

    pending = await engine.wait_for_review(queue_id, timeout=40)
    assert "after 1 attempt(s)" in str(pending["summary"])
    [raw_ack] = [d for d in pending["details"] if str(d).startswith("MSH")]
    assert f"MSA|{answer}|" in raw_ack
    assert f"ERR|||{code}^Not accepted^HL70357" in raw_ack
    await asyncio.sleep(1.0)  # no retry is coming: the partner saw it exactly once
    assert [m["answered"] for m in await received(billing, visit)] == [answer]

    await decide(engine, queue_id, pending["review_id"], ReviewAction.RETRY, "mapping fixed")
    messages = await wait_received(billing, visit, 1)
    assert [m["answered"] for m in messages] == [answer, "AA"]
    assert messages[0]["control_id"] == messages[1]["control_id"]  # the same delivery

    # The workflow's retry is a RETRY row (attempt 2), written with its outcome row.
    to_billing = "deliver_to_mllp -> billing"
    rows = await audit_rows(
        engine, queue_id, lambda rows: ("push", "attempt 2") in delivery_rows(rows, to_billing)
    )
    assert delivery_rows(rows, to_billing) == [
        ("exception", "ApplicationError DestinationRejected (non-retryable), attempt 1 (local)"),
        ("retry", "attempt 2"),
        ("push", "attempt 2"),
    ]


async def test_continue_as_new_keeps_the_order_and_the_log(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    billing = partners["billing"]
    queue_id = delivery_id("billing", "MRN6006")
    # The queue is started here with a low threshold; the exchange's signal-with-start
    # then finds it running and only signals.
    await engine.client.start_workflow(
        OrderedDelivery.run,
        DeliveryState(
            destination="billing",
            kind="mllp",
            patient_key=patient_key("MRN6006"),
            idle_close_seconds=600,
            continue_as_new_after_events=25,
        ),
        id=queue_id,
        task_queue=engine.settings.task_queue,
    )
    patient_stay = stay("V-6006", "MRN6006")
    trigger_order = ["A03", "A13"] * 5
    await send(
        engine,
        *(
            sm.adt_event(patient_stay, f"DS-6006-{n}", trigger)
            for n, trigger in enumerate(trigger_order, start=1)
        ),
    )

    messages = await wait_received(billing, "V-6006", len(trigger_order), timeout=60)
    await asyncio.sleep(1.0)
    messages = await received(billing, "V-6006")
    assert triggers(messages) == trigger_order
    assert [m["answered"] for m in messages] == ["AA"] * len(trigger_order)  # no duplicate
    for _ in range(50):  # visibility follows the runs closely, not instantly
        runs = [run async for run in engine.client.list_workflows(f"WorkflowId = '{queue_id}'")]
        continued = [r for r in runs if r.status is WorkflowExecutionStatus.CONTINUED_AS_NEW]
        if continued:
            break
        await asyncio.sleep(0.2)
    assert continued, [r.status for r in runs]
    assert len({r.run_id for r in runs}) == len(continued) + 1
    # The log of the latest run still has every delivery, in order.
    log = await wait_delivery_log(engine, queue_id, len(trigger_order))
    assert [e["event_id"].rsplit("/", 1)[-1] for e in log] == [
        f"DS-6006-{n}" for n in range(1, len(trigger_order) + 1)
    ]
    assert {e["outcome"] for e in log} == {"delivered"}


async def test_a_held_patient_does_not_hold_another_patient_at_the_same_destination(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    billing = partners["billing"]
    held_id = delivery_id("billing", "MRN6007")
    await billing.aset_mode("silent", patient_id="MRN6007")
    try:
        await send(engine, sm.adt_event(stay("V-6007", "MRN6007"), "DS-6007-1", "A03"))
        await wait_received(billing, "V-6007", 1, answered="none")
        await send(engine, sm.adt_event(stay("V-6008", "MRN6008"), "DS-6008-1", "A03"))
        other = await wait_received(billing, "V-6008", 1)
        assert triggers(other) == ["A03"]
        # Patient A is still held at billing while patient B went through.
        assert {m["answered"] for m in await received(billing, "V-6007")} == {"none"}
        assert await engine.handle(held_id).query("queue_length") == 1
        pending = await engine.wait_for_review(held_id, timeout=40)
    finally:
        await billing.aset_mode("AA")
    await decide(engine, held_id, pending["review_id"], ReviewAction.RETRY, "billing restarted")
    await wait_received(billing, "V-6007", 1)
    log = await wait_delivery_log(engine, delivery_id("billing", "MRN6008"), 1)
    assert [(e["outcome"], e["attempts"]) for e in log] == [("delivered", 1)]


async def test_a_burst_to_a_healthy_destination_is_sent_within_the_workflow_task(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    """The queue reads the health workflow's published answer and sends the first attempt
    as local activities: no signal to the health workflow, no activity task. A refused
    first attempt is still counted, and the retry after it is an activity."""
    engine = discharge_engine
    billing = partners["billing"]
    queue_id = delivery_id("billing", "MRN6020")
    patient_stay = stay("V-6020", "MRN6020")
    await send(engine, sm.adt_event(patient_stay, "DS-6020-1", "A03"))
    await wait_received(billing, "V-6020", 1)
    await wait_delivery_log(engine, queue_id, 1)

    await billing.aset_mode("AE", code="206", text="Record locked", times=1, patient_id="MRN6020")
    await send(engine, sm.adt_event(patient_stay, "DS-6020-2", "A13"))
    messages = await wait_received(billing, "V-6020", 2)
    assert [(m["message_type"].split("^")[1], m["answered"]) for m in messages] == [
        ("A03", "AA"),
        ("A13", "AE"),
        ("A13", "AA"),
    ]
    log = await wait_delivery_log(engine, queue_id, 2)
    assert [(e["outcome"], e["attempts"]) for e in log] == [("delivered", 1), ("delivered", 2)]

    history = await engine.handle(queue_id).fetch_history()
    kinds = [event.event_type for event in history.events]
    assert EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED not in kinds
    # Each burst read the published answer; each event's first attempt was local.
    assert local_attempts(history, "destination_clear") == [(1, False), (1, False)]
    assert local_attempts(history, "deliver_to_mllp") == [(1, False), (1, True)]
    scheduled = [
        event.activity_task_scheduled_event_attributes.activity_type.name
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled == ["deliver_to_mllp"]


FHIR_FAILURE_ROUTING = """
version = "test-fhir-failures"

[[destination]]
name = "fhir-refusing"
kind = "fhir"
subscribes = ["A03"]
[destination.fhir]
base_url = "{refusing}"
[destination.policy]
max_attempts = 5
first_retry_seconds = 0.2
max_retry_seconds = 1

[[destination]]
name = "fhir-down"
kind = "fhir"
subscribes = ["A03"]
[destination.fhir]
base_url = "{down}"
timeout_seconds = 2
[destination.policy]
max_attempts = 60
first_retry_seconds = 0.2
max_retry_seconds = 1
"""


async def test_fhir_destination_refusal_goes_to_review_and_an_outage_is_retried(
    temporal_client: Client, fhir_base_url: str, tmp_path: Path
) -> None:
    # A path the FHIR server does not serve (404), and a port where nothing listens yet.
    down_port = free_port()
    routing = tmp_path / "destinations.toml"
    routing.write_text(
        FHIR_FAILURE_ROUTING.format(
            refusing=fhir_base_url.removesuffix("/fhir") + "/not-fhir",
            down=f"http://127.0.0.1:{down_port}/fhir",
        )
    )
    refusing_id = delivery_id("fhir-refusing", "MRN6004")
    down_id = delivery_id("fhir-down", "MRN6004")
    async with running_engine(
        temporal_client,
        fhir_base_url,
        task_queue="careweave-test-delivery-fhir",
        destinations_file=routing,
        pseudonym_key=PSEUDONYM_KEY,
    ) as engine:
        await send(engine, sm.adt_event(stay("V-6004", "MRN6004"), "DS-6004-1", "A03"))

        pending = await engine.wait_for_review(refusing_id, timeout=40)
        assert "after 1 attempt(s): HTTP 404" in str(pending["summary"])
        refused = delivery_rows(
            engine.store.audit_log().records(exchange=refusing_id),
            "deliver_to_fhir -> fhir-refusing",
        )
        assert refused == [
            ("exception", "ApplicationError DestinationRejected (non-retryable), attempt 1 (local)")
        ]

        await wait_alert(engine, down_id, "failing")
        down = "deliver_to_fhir -> fhir-down"
        rows = await audit_rows(engine, down_id, lambda rows: len(delivery_rows(rows, down)) >= 3)
        # Retried by the workflow with backoff, each send after the first a RETRY row.
        assert delivery_rows(rows, down)[:3] == [
            ("exception", "ApplicationError DestinationUnavailable (retryable), attempt 1 (local)"),
            ("retry", "ApplicationError DestinationUnavailable (retryable), attempt 2"),
            ("exception", "ApplicationError DestinationUnavailable (retryable), attempt 2"),
        ]
        assert await engine.handle(down_id).query("pending_review") is None

        with contextlib.ExitStack() as stack:
            # Started off the event loop: the worker runs on it and keeps retrying meanwhile.
            base_url = await asyncio.to_thread(
                stack.enter_context, running_fhir_server(port=down_port)
            )
            await wait_alert(engine, down_id, "ok", timeout=30)
            log = await wait_delivery_log(engine, down_id, 1)
            assert [e["outcome"] for e in log] == ["delivered"]
            assert "Encounter/" in log[0]["detail"]
            async with FhirClient(base_url, timeout=10) as fhir:
                assert len(await fhir.search("Encounter", {"identifier": "V-6004"})) == 1
            rows = engine.store.audit_log().records(exchange=down_id)
            assert [a for a, _ in delivery_rows(rows, down)].count("push") == 1  # written once
            await asyncio.to_thread(stack.close)


SLOW_FHIR_ROUTING = """
version = "test-slow-fhir"

[[destination]]
name = "fhir-slow"
kind = "fhir"
subscribes = ["A03"]
[destination.fhir]
base_url = "{base_url}"
timeout_seconds = 60
"""


async def test_a_first_attempt_without_an_answer_in_time_goes_on_as_an_activity(
    temporal_client: Client, fhir_base_url: str, tmp_path: Path
) -> None:
    """A FHIR destination allowed to answer slowly (60 s) whose server hangs (SIGSTOP) past
    the local attempt's limit: the local attempt gives up, the same delivery goes on as an
    activity and lands, once, when the server answers again. The queue's history, with the
    local attempt's failure, replays (replayed, that failure arrives outside an
    ActivityError; taking only the live shape had failed a queue in the soak)."""
    queue_id = delivery_id("fhir-slow", "MRN6030")
    with fhir_server_process() as slow:
        routing = tmp_path / "destinations.toml"
        routing.write_text(SLOW_FHIR_ROUTING.format(base_url=slow.base_url))
        async with running_engine(
            temporal_client,
            fhir_base_url,
            task_queue="careweave-test-delivery-slow-fhir",
            destinations_file=routing,
            pseudonym_key=PSEUDONYM_KEY,
        ) as engine:
            slow.process.send_signal(signal.SIGSTOP)
            try:
                await send(engine, sm.adt_event(stay("V-6030", "MRN6030"), "DS-6030-1", "A03"))

                async def activity_pending() -> bool:
                    with contextlib.suppress(Exception):  # the queue is not started yet
                        described = await engine.handle(queue_id).describe()
                        return bool(described.raw_description.pending_activities)
                    return False

                for _ in range(120):
                    if await activity_pending():
                        break
                    await asyncio.sleep(0.5)
                else:
                    raise AssertionError("the local attempt never gave way to an activity")
            finally:
                slow.process.send_signal(signal.SIGCONT)
            log = await wait_delivery_log(engine, queue_id, 1, timeout=60)
            assert [(e["outcome"], e["attempts"]) for e in log] == [("delivered", 1)]
            history = await engine.handle(queue_id).fetch_history()
            assert local_attempts(history, "deliver_to_fhir") == [(1, True)]
            scheduled = [
                event.activity_task_scheduled_event_attributes.activity_type.name
                for event in history.events
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            ]
            assert scheduled == ["deliver_to_fhir"]
            decoded = await decoded_history(engine.client, queue_id)
            replayed = await replayer().replay_workflow(decoded, raise_on_replay_failure=False)
            assert replayed.replay_failure is None
        async with FhirClient(slow.base_url, timeout=10) as fhir:
            encounters = await fhir.search("Encounter", {"identifier": "V-6030"})
        assert [e["status"] for e in encounters] == ["finished"]


async def test_an_idle_queue_closes_after_its_idle_time(discharge_engine: Engine) -> None:
    # wait_condition raises on its timeout: the queue must complete, not fail.
    engine = discharge_engine
    handle = await engine.client.start_workflow(
        OrderedDelivery.run,
        DeliveryState(
            destination="billing",
            kind="mllp",
            patient_key=patient_key("MRN6099"),
            idle_close_seconds=1,
        ),
        id=delivery_id("billing", "MRN6099"),
        task_queue=engine.settings.task_queue,
    )
    assert await asyncio.wait_for(handle.result(), timeout=30) == 0
