"""The Patient of a lab result, end to end (real Temporal dev server, worker, gateway and
FHIR server, mapping v2): a result for a patient the server has never seen creates the
Patient from the whole PID and refers to it literally, so ``DiagnosticReport?patient=``
finds the report; a Patient another source wrote is referenced and never overwritten; the
Specimen exists with its collection and received times."""

from __future__ import annotations

from typing import Any

from tests.integration.test_order_to_result_e2e import read, report_and_task, send, workflow_id
from tests.support.engine import Engine
from workers import sample_messages as sm

PATIENT_SYSTEM = f"urn:careweave:patient-id:{sm.HOSPITAL}"


def with_full_pid(message: str, mrn: str) -> str:
    """``message`` with a PID that says everything a registration system would."""
    pid = (
        f"PID|1||{mrn}^^^{sm.HOSPITAL}^MR~SSN-{mrn}^^^USSSA^SS||"
        "Pidpatient^Ada^Maria^Jr^Dr^^L~Smith^Ada^^^^^M||19610203|F|||"
        "12 Lake Road^Apt 4^Springfield^IL^62701^USA^H||^PRN^PH^^1^217^5550100~"
        "^NET^Internet^ada@example.org|^WPN^PH^^1^217^5550199|||||||||||||||20261124|Y"
    )
    segments = message.rstrip("\r").split("\r")
    return "\r".join(pid if s.startswith("PID|") else s for s in segments) + "\r"


def with_specimen(message: str) -> str:
    """``message`` with an SPM after its OBR: blood, collected 08:30, received 09:05."""
    spm = (
        "SPM|1|SP-1^LAB||119297000^Blood specimen^SCT|||||||||||||"
        "20261125083000-0500|20261125090500-0500"
    )
    segments = message.rstrip("\r").split("\r")
    at = next(i for i, s in enumerate(segments) if s.startswith("OBR|")) + 1
    return "\r".join([*segments[:at], spm, *segments[at:]]) + "\r"


async def the_patient(engine: Engine, mrn: str) -> dict[str, Any]:
    [patient] = await engine.fhir.search("Patient", {"identifier": f"{PATIENT_SYSTEM}|{mrn}"})
    return patient


async def test_a_result_creates_its_patient_and_is_found_by_literal_reference(
    engine: Engine,
) -> None:
    mrn = "MRN-LABPAT-2101"
    order = sm.SampleOrder("E2E-2101", patient=sm.SamplePatient(mrn=mrn))
    await send(
        engine,
        with_full_pid(sm.lab_order(order, "E2E-2101-O"), mrn),
        with_specimen(with_full_pid(sm.lab_result(order, "E2E-2101-R", [sm.SODIUM]), mrn)),
    )
    await engine.wait_for_status(workflow_id(engine, order), "final")

    patient = await the_patient(engine, mrn)
    assert {(i["system"], i["value"]) for i in patient["identifier"]} >= {
        (PATIENT_SYSTEM, mrn),
        ("urn:careweave:patient-id:USSSA", f"SSN-{mrn}"),
    }
    [official, maiden] = patient["name"]
    assert official["family"] == "Pidpatient"
    assert official["given"] == ["Ada", "Maria"]
    assert official["prefix"] == ["Dr"]
    assert official["suffix"] == ["Jr"]
    assert maiden["use"] == "maiden"
    assert patient["birthDate"] == "1961-02-03"
    assert patient["gender"] == "female"
    assert patient["address"][0]["city"] == "Springfield"
    assert {t["value"] for t in patient["telecom"]} >= {"ada@example.org"}
    assert patient["deceasedDateTime"] == "2026-11-24"

    reference = f"Patient/{patient['id']}"
    [found] = await engine.fhir.search("DiagnosticReport", {"patient": reference})
    report, task = await report_and_task(engine, order)
    assert found["id"] == report["id"]
    assert report["subject"]["reference"] == reference
    assert task["for"]["reference"] == reference
    observation = await read(engine, report["result"][0]["reference"])
    assert observation["subject"]["reference"] == reference
    [service_request] = await engine.fhir.search("ServiceRequest", {"patient": reference})
    assert service_request["requester"]["display"] == "Marcus Welby"

    [specimen_ref] = report["specimen"]
    specimen = await read(engine, specimen_ref["reference"])
    assert specimen["subject"]["reference"] == reference
    assert specimen["collection"]["collectedDateTime"] == "2026-11-25T08:30:00-05:00"
    assert specimen["receivedTime"] == "2026-11-25T09:05:00-05:00"
    assert observation["specimen"]["reference"] == specimen_ref["reference"]


async def test_a_patient_another_source_wrote_is_referenced_not_overwritten(
    engine: Engine,
) -> None:
    mrn = "MRN-LABPAT-2102"
    registered = {
        "resourceType": "Patient",
        "identifier": [{"system": PATIENT_SYSTEM, "value": mrn}],
        "name": [{"use": "official", "family": "Registered", "given": ["Name"]}],
        "telecom": [{"system": "phone", "value": "555-0000", "use": "mobile"}],
    }
    created = await engine.fhir.conditional_create(registered, f"identifier={PATIENT_SYSTEM}|{mrn}")
    order = sm.SampleOrder("E2E-2102", patient=sm.SamplePatient(mrn=mrn))
    await send(
        engine,
        with_full_pid(sm.lab_order(order, "E2E-2102-O"), mrn),
        with_full_pid(sm.lab_result(order, "E2E-2102-R", [sm.SODIUM]), mrn),
    )
    await engine.wait_for_status(workflow_id(engine, order), "final")

    patient = await the_patient(engine, mrn)
    assert patient["id"] == created["id"]
    assert patient["name"] == registered["name"]
    assert patient["telecom"] == registered["telecom"]
    assert len(await engine.fhir.history("Patient", created["id"])) == 1
    report, _ = await report_and_task(engine, order)
    assert report["subject"]["reference"] == f"Patient/{created['id']}"


async def test_a_result_whose_other_identifier_contradicts_its_order_waits_for_review(
    engine: Engine,
) -> None:
    mrn = "MRN-LABPAT-2103"
    order = sm.SampleOrder("E2E-2103", patient=sm.SamplePatient(mrn=mrn))
    result = with_full_pid(sm.lab_result(order, "E2E-2103-R", [sm.SODIUM]), mrn).replace(
        f"~SSN-{mrn}^^^USSSA^SS", "~SSN-SOMEONE-ELSE^^^USSSA^SS"
    )
    await send(engine, with_full_pid(sm.lab_order(order, "E2E-2103-O"), mrn), result)
    wid = workflow_id(engine, order)
    pending = await engine.wait_for_review(wid)
    assert pending["reason"] == "patient-mismatch"
    # Nothing of the result is published while a reviewer has not decided.
    written = await engine.handle(wid).query("resources_written")
    assert not [ref for ref in written if ref.startswith("DiagnosticReport/")]
