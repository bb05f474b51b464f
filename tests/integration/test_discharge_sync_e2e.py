"""Discharge sync end to end: python-hl7's `mllp_send` -> gateway -> Temporal -> worker
-> the FHIR server and two partner systems (an npm MLLP server, @medplum/hl7's Hl7Server,
that answers AA/AE/AR or nothing on command). Order is asserted from what the partners
actually received. Each test uses its own patient, so its queues are its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.hl7v2.adt_messages import parse_adt_event
from mappings.discharge_sync.fhir_builders import encounter_transaction_for
from mappings.discharge_sync.mapping import load_adt_mapping
from mappings.fhir_identifiers import identifier_query
from models.review import ReviewAction, ReviewDecision
from tests.support.discharge import (
    delivery_id,
    discharge_id,
    encounter,
    received,
    send,
    stay,
    triggers,
    wait_condition_codes,
    wait_delivery_log,
    wait_received,
)
from tests.support.engine import Engine
from tests.support.partner import Partner
from workers import sample_messages as sm


async def test_discharge_reaches_every_destination(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    patient_stay = stay("V-5001", "MRN5001")
    await send(engine, sm.adt_event(patient_stay, "DS-5001-1", "A03"))

    for name in ("primary-care", "billing"):
        messages = await wait_received(partners[name], "V-5001", 1)
        assert triggers(messages) == ["A03"]
        # Readdressed to the partner, data verbatim.
        assert "|CAREWEAVE|" in messages[0]["text"].split("\r")[0]
        assert "DG1|2||E11.9^" in messages[0]["text"]

    found = await encounter(engine, "V-5001")
    for _ in range(50):
        if found["status"] == "finished":
            break
        await asyncio.sleep(0.2)
        found = await encounter(engine, "V-5001")
    assert found["status"] == "finished"
    assert found["period"]["end"].startswith("2026-11-25")
    assert found["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"
    conditions = await engine.fhir.search("Condition", {"encounter": f"Encounter/{found['id']}"})
    icd = {
        coding["code"]
        for condition in conditions
        for coding in condition["code"]["coding"]
        if coding["system"] == "http://hl7.org/fhir/sid/icd-10-cm"
    }
    assert icd == {"I10", "E11.9"}

    # Ids and search attributes carry pseudonyms, not the visit number or MRN.
    description = await engine.handle(discharge_id("V-5001")).describe()
    assert "V-5001" not in description.id and "MRN5001" not in description.id
    routed = await engine.handle(discharge_id("V-5001")).query("routed_events")
    assert routed[0]["destinations"] == ["fhir-platform", "primary-care", "billing"]
    assert routed[0]["routing_version"].startswith("test-1 (sha256 ")


async def test_cancel_follows_the_discharge(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    patient_stay = stay("V-5002", "MRN5002")
    await send(
        engine,
        sm.adt_event(patient_stay, "DS-5002-1", "A03"),
        sm.adt_event(patient_stay, "DS-5002-2", "A13"),
    )
    for name in ("primary-care", "billing"):
        messages = await wait_received(partners[name], "V-5002", 2)
        assert triggers(messages) == ["A03", "A13"]
    for _ in range(100):
        found = await encounter(engine, "V-5002")
        if found["status"] == "in-progress":
            break
        await asyncio.sleep(0.2)
    assert found["status"] == "in-progress"
    assert "end" not in found.get("period", {})


async def test_amended_diagnosis_reaches_billing_after_the_discharge(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    first = stay("V-5003", "MRN5003")
    amended = stay(
        "V-5003",
        "MRN5003",
        diagnoses=(
            sm.SampleDiagnosis("1", "I10", "Essential (primary) hypertension", "A"),
            sm.SampleDiagnosis("2", "E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
        ),
    )
    await send(
        engine,
        sm.adt_event(first, "DS-5003-1", "A03"),
        sm.adt_event(first, "DS-5003-2", "A08"),  # no diagnosis change: not forwarded
        sm.adt_event(amended, "DS-5003-3", "A08"),
    )
    billing = await wait_received(partners["billing"], "V-5003", 2)
    assert triggers(billing) == ["A03", "A08"]
    assert "E11.65" in billing[-1]["text"]
    await asyncio.sleep(1.0)
    assert triggers(await received(partners["primary-care"], "V-5003")) == ["A03"]

    # Amended in place: still two Conditions.
    await wait_condition_codes(engine, "V-5003", ["E11.65", "I10"])


async def test_rejections_hold_the_queue_and_keep_the_order(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    billing = partners["billing"]
    first = stay("V-5004", "MRN5004")
    amended = stay(
        "V-5004",
        "MRN5004",
        diagnoses=(sm.SampleDiagnosis("1", "J18.9", "Pneumonia, unspecified organism"),),
    )
    billing.set_mode("AR", code="207", text="Application internal error", times=3)
    try:
        await send(
            engine,
            sm.adt_event(first, "DS-5004-1", "A03"),
            sm.adt_event(amended, "DS-5004-2", "A08"),
        )
        messages = await wait_received(billing, "V-5004", 2, timeout=40)
    finally:
        billing.set_mode("AA")
    assert [(m["message_type"].split("^")[1], m["answered"]) for m in messages] == [
        ("A03", "AR"),
        ("A03", "AR"),
        ("A03", "AR"),
        ("A03", "AA"),
        ("A08", "AA"),
    ]
    # The resends are the same delivery (same MSH-10); the A08 never overtook it.
    assert len({m["control_id"] for m in messages[:4]}) == 1
    assert messages[4]["control_id"] != messages[0]["control_id"]
    # Primary care was not held up by billing.
    assert triggers(await received(partners["primary-care"], "V-5004")) == ["A03"]
    log = await wait_delivery_log(engine, delivery_id("billing", "MRN5004"), 2)
    assert [(entry["outcome"], entry["attempts"]) for entry in log] == [
        ("delivered", 4),
        ("delivered", 1),
    ]
    alert = await engine.client.count_workflows(
        f"WorkflowId = '{delivery_id('billing', 'MRN5004')}' AND DeliveryAlert = 'ok'"
    )
    assert alert.count == 1


async def test_destination_down_goes_to_review_and_is_delivered_once(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    primary_care = partners["primary-care"]
    queue_id = delivery_id("primary-care", "MRN5005")
    primary_care.set_mode("silent")
    try:
        await send(engine, sm.adt_event(stay("V-5005", "MRN5005"), "DS-5005-1", "A03"))
        pending = await engine.wait_for_review(queue_id, timeout=40)
        assert pending["reason"] == "delivery-failed"
        failing = await engine.client.count_workflows(
            f"Destination = 'primary-care' AND DeliveryAlert = 'failing' "
            f"AND WorkflowId = '{queue_id}'"
        )
        assert failing.count == 1
    finally:
        primary_care.set_mode("AA")
    # Billing is another queue: it was not held up.
    await wait_received(partners["billing"], "V-5005", 1)

    await engine.decide_review(
        queue_id,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.RETRY,
            reason="primary care interface restarted",
            reviewer="ops-1",
        ),
    )
    messages = await wait_received(primary_care, "V-5005", 1)
    await asyncio.sleep(1.0)
    messages = await received(primary_care, "V-5005")
    assert [m["answered"] for m in messages].count("AA") == 1
    assert {m["answered"] for m in messages} == {"none", "AA"}
    log = await wait_delivery_log(engine, queue_id, 1)
    assert [entry["outcome"] for entry in log] == ["delivered"]
    history = await engine.handle(queue_id).query("review_history")
    assert history[0]["decision"]["reviewer"] == "ops-1"


def patient_from_another_source(mrn: str) -> dict[str, Any]:
    """The Patient as a registration system wrote it before any discharge: a mobile phone,
    a second identifier and a link that discharge sync knows nothing about."""
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": f"urn:careweave:patient-id:{sm.HOSPITAL}", "value": mrn},
            {"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"REG-{mrn}"},
        ],
        "name": [{"family": "Testpatient", "given": ["Alma"]}],
        "telecom": [{"system": "phone", "value": "+1 555 0100", "use": "mobile"}],
        "link": [{"other": {"display": "record in the regional registry"}, "type": "seealso"}],
    }


async def test_discharge_keeps_what_other_sources_wrote_on_the_patient(
    discharge_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = discharge_engine
    written = patient_from_another_source("MRN5010")
    existing = await engine.fhir.conditional_create(
        written, identifier_query(written["identifier"][0])
    )
    await send(engine, sm.adt_event(stay("V-5010", "MRN5010"), "DS-5010-1", "A03"))

    found = await encounter(engine, "V-5010")
    for _ in range(100):
        if found["status"] == "finished":
            break
        await asyncio.sleep(0.2)
        found = await encounter(engine, "V-5010")
    assert found["status"] == "finished"
    # Mapping v3: the Encounter points at the Patient that was there, which the
    # discharge did not write at all (same version, phone, identifier and link kept).
    assert found["subject"] == {"reference": f"Patient/{existing['id']}"}
    patient = await engine.fhir.read("Patient", existing["id"])
    assert patient["meta"]["versionId"] == existing["meta"]["versionId"]
    assert patient["telecom"] == written["telecom"]
    assert patient["identifier"] == written["identifier"]
    assert patient["link"] == written["link"]
    same_mrn = await engine.fhir.search(
        "Patient", {"identifier": f"urn:careweave:patient-id:{sm.HOSPITAL}|MRN5010"}
    )
    assert [p["id"] for p in same_mrn] == [existing["id"]]


async def test_mapping_v2_wrote_over_the_patient(discharge_engine: Engine) -> None:
    """Why v3 exists: the v2 transaction of the same discharge, sent to the same server,
    replaces the Patient and loses the phone, the second identifier and the link."""
    engine = discharge_engine
    written = patient_from_another_source("MRN5011")
    existing = await engine.fhir.conditional_create(
        written, identifier_query(written["identifier"][0])
    )
    event = parse_adt_event(sm.adt_event(stay("V-5011", "MRN5011"), "DS-5011-1", "A03"))
    await engine.fhir.transaction(encounter_transaction_for(event, load_adt_mapping("v2")))
    patient = await engine.fhir.read("Patient", existing["id"])
    assert "telecom" not in patient
    assert "link" not in patient
    assert patient["identifier"] == written["identifier"][:1]


async def test_a_discharge_the_full_parser_refuses_waits_for_a_reviewer(
    discharge_engine: Engine,
) -> None:
    # PID-7 is not read on the ACK path; the full parse (a local activity) refuses it. Its
    # refusal reaches the workflow unwrapped: it must still ask a reviewer, not fail.
    engine = discharge_engine
    patient = sm.SamplePatient(mrn="MRN5090", birth_date="1972-04-15")
    await send(engine, sm.adt_event(sm.SampleStay("V-5090", patient=patient), "DS-5090", "A03"))
    pending = await engine.wait_for_review(discharge_id("V-5090"), timeout=30)
    assert pending["reason"] == "invalid-message"
    assert "PID-7" in pending["summary"]
    assert "1972" not in pending["summary"]
