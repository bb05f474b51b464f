"""Patient merges announced downstream end to end: a discharge (ADT^A03) and then a merge
(ADT^A40) of the same surviving patient travel gateway -> Temporal -> worker -> the partner
system (partners/partner.js) through that patient's ordered delivery queue, and an undo
(`careweave merge undo`) sends the A37 the same way. What the partner actually received,
in its arrival order, is what is checked. Each test has its own patients (MRN-MD-xx).
"""

from __future__ import annotations

import asyncio
from typing import Any

from activities.ordered_delivery import NOTHING_TO_SEND_TO_FHIR, outbound_control_id
from adapters.hl7v2.merge_messages import parse_identity_message
from models.merge import LinkMessage, MergeMessage
from models.review import ReviewAction, ReviewDecision
from tests.integration.test_patient_merge_e2e import a40, registered
from tests.support.discharge import delivery_id, patient_key, send, wait_delivery_log
from tests.support.engine import Engine
from tests.support.partner import Partner
from workers import sample_messages as sm
from workers.merge_undo import undo_merge
from workflows.merge_announcements import merge_event_id

# The demographics of test_patient_merge_e2e's A40 and Patients: the two records match.
BIRTH_DATE = "1958-07-21"


def merge_id(survivor_mrn: str) -> str:
    return f"patient-merge/{sm.HOSPITAL}/{patient_key(survivor_mrn)}"


def discharge(visit: str, mrn: str, control_id: str) -> str:
    patient = sm.SamplePatient(
        mrn=mrn, family="Mergeton", given="Clara", birth_date=BIRTH_DATE.replace("-", "")
    )
    return sm.adt_event(sm.SampleStay(visit, patient=patient), control_id, "A03")


async def of_patient(partner: Partner, mrn: str) -> list[dict[str, Any]]:
    """Every message the partner got naming ``mrn`` in a PID-3 or MRG-1, in arrival order."""
    return [m for m in await partner.amessages() if f"|{mrn}^" in m["text"]]


async def wait_accepted(partner: Partner, mrn: str, count: int) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    messages: list[dict[str, Any]] = []
    while loop.time() < deadline:
        messages = await of_patient(partner, mrn)
        if len([m for m in messages if m["answered"] == "AA"]) >= count:
            return messages
        await asyncio.sleep(0.2)
    raise AssertionError(f"{partner.name} got {messages!r} for {mrn}, wanted {count} AA")


def event_of(message: dict[str, Any]) -> str:
    return str(message["message_type"]).split("^")[1]


async def wait_queue_length(engine: Engine, queue_id: str, length: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    found = -1
    while loop.time() < deadline:
        found = await engine.handle(queue_id).query("queue_length")
        if found == length:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{queue_id}: {found} queued, wanted {length}")


async def merged(engine: Engine, survivor: str, retired: str, control_id: str) -> None:
    await registered(engine, survivor, BIRTH_DATE)
    await registered(engine, retired, BIRTH_DATE)
    await send(engine, a40(control_id, survivor, retired, BIRTH_DATE.replace("-", "")))
    await engine.wait_for_status(merge_id(survivor), "merged")


async def test_the_a40_reaches_the_partner_after_the_patients_held_discharge_never_before(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    primary_care = partners["primary-care"]
    survivor, retired = "MRN-MD-01A", "MRN-MD-01B"
    queue_id = delivery_id("primary-care", survivor)
    # The partner refuses the survivor's messages for now ("record locked", temporary): the
    # discharge is held at the head of the survivor's queue until a person retries it.
    await primary_care.aset_mode("AE", code="206", text="Record locked", patient_id=survivor)
    try:
        await send(engine, discharge("V-MD-01", survivor, "MD-01-A03"))
        pending = await engine.wait_for_review(queue_id, timeout=40)
        await merged(engine, survivor, retired, "MD-01-A40")
        # The A40 waits behind the held A03, on the same queue.
        await wait_queue_length(engine, queue_id, 2)
        assert "A40" not in [event_of(m) for m in await of_patient(primary_care, survivor)]
    finally:
        await primary_care.aset_mode("AA")
    await engine.decide_review(
        queue_id,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.RETRY,
            reason="record unlocked",
            reviewer="ops-1",
        ),
    )

    messages = await wait_accepted(primary_care, survivor, 2)
    assert [event_of(m) for m in messages if m["answered"] == "AA"] == ["A03", "A40"]
    first_a40 = [event_of(m) for m in messages].index("A40")
    accepted_a03 = next(i for i, m in enumerate(messages) if m["answered"] == "AA")
    assert first_a40 > accepted_a03

    [sent] = [m for m in messages if event_of(m) == "A40"]
    read = parse_identity_message(sent["text"])
    assert isinstance(read, MergeMessage)
    [merge] = read.merges
    assert merge.survivor.value == survivor
    assert merge.retired is not None and merge.retired.value == retired
    # Readdressed for the partner, with the delivery's own MSH-10.
    header = sent["text"].split("\r")[0].split("|")
    assert header[4:6] == ["PCEHR", "NORTHCLINIC"]
    event_id = merge_event_id(patient_key(survivor), sm.HOSPITAL, "MD-01-A40", 0)
    assert header[9] == outbound_control_id(event_id, "primary-care", 0)

    # The FHIR destination subscribed to A40 has nothing to send: the merge is on the server.
    log = await wait_delivery_log(engine, delivery_id("fhir-platform", survivor), 2)
    [merge_entry] = [entry for entry in log if entry["subscription"] == "A40"]
    assert merge_entry["outcome"] == "delivered"
    assert merge_entry["detail"] == NOTHING_TO_SEND_TO_FHIR


async def test_an_undo_sends_the_a37_after_the_a40(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    primary_care = partners["primary-care"]
    survivor, retired = "MRN-MD-02A", "MRN-MD-02B"
    await send(engine, discharge("V-MD-02", survivor, "MD-02-A03"))
    await merged(engine, survivor, retired, "MD-02-A40")
    await wait_accepted(primary_care, survivor, 2)

    await undo_merge(
        engine.client,
        merge_id(survivor),
        reason="two people: registration error",
        actor="ops-1",
        task_queue=engine.settings.task_queue,
    )
    messages = await wait_accepted(primary_care, survivor, 3)
    assert [event_of(m) for m in messages if m["answered"] == "AA"] == ["A03", "A40", "A37"]
    read = parse_identity_message(messages[-1]["text"])
    assert isinstance(read, LinkMessage)
    assert read.trigger.value == "A37"
    assert survivor in [i.value for i in read.first.identifiers]
    assert retired not in [i.value for i in read.first.identifiers]
    assert [i.value for i in read.second.identifiers] == [retired]


async def test_the_merged_away_patients_held_queue_is_handed_to_the_survivor_in_order(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    primary_care = partners["primary-care"]
    survivor, retired = "MRN-MD-03A", "MRN-MD-03B"
    retired_queue = delivery_id("primary-care", retired)
    stay = sm.SampleStay(
        "V-MD-03",
        patient=sm.SamplePatient(
            mrn=retired, family="Mergeton", given="Clara", birth_date=BIRTH_DATE.replace("-", "")
        ),
    )
    # The retired record's discharge is held at the head of its queue (refused, temporary),
    # and its update waits behind it when the merge comes.
    await primary_care.aset_mode("AE", code="206", text="Record locked", patient_id=retired)
    try:
        await send(engine, sm.adt_event(stay, "MD-03-A03", "A03"))
        pending = await engine.wait_for_review(retired_queue, timeout=40)
        await send(engine, sm.adt_event(stay, "MD-03-A13", "A13"))
        await wait_queue_length(engine, retired_queue, 2)
        await merged(engine, survivor, retired, "MD-03-A40")
        # Nothing overtakes the held discharge: not the update, not the merge.
        await asyncio.sleep(1.0)
        received = [event_of(m) for m in await primary_care.amessages() if "MRN-MD-03" in m["text"]]
        assert "A40" not in received and "A13" not in received
    finally:
        await primary_care.aset_mode("AA")
    await engine.decide_review(
        retired_queue,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.RETRY,
            reason="record unlocked",
            reviewer="ops-1",
        ),
    )
    # The retired record's A03 and A13, then the A40 naming both records, in that order.
    messages = await wait_accepted(primary_care, retired, 3)
    assert [event_of(m) for m in messages if m["answered"] == "AA"] == ["A03", "A13", "A40"]
    # The update and the merge went through the survivor's queue, each once.
    log = await wait_delivery_log(engine, delivery_id("primary-care", survivor), 2)
    assert [(entry["subscription"], entry["outcome"]) for entry in log] == [
        ("A13", "delivered"),
        ("A40", "delivered"),
    ]
    retired_log = await engine.handle(retired_queue).query("delivery_log")
    assert [(entry["subscription"], entry["outcome"]) for entry in retired_log] == [
        ("A03", "delivered"),
        ("A13", "handed-over"),
        ("A40", "handed-over"),
    ]
