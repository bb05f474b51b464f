"""Imaging order-to-result end to end, every part real: the RIS's ORM through the MLLP
gateway -> ServiceRequest and a worklist entry that dcmtk's findscu reads from Orthanc ->
storescu sends images (pydicom's test files, rewritten for the entry) -> Orthanc's
StableStudy, followed by the PACS poller -> ImagingStudy and its DICOMweb Endpoint on the
FHIR server -> the radiology ORU's DiagnosticReport linked to the study. Also: a late
series, a study naming another patient, a study without an order (rejected, or approved
for its own patient once registration knows them), a cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from temporalio.client import Client, WorkflowUpdateFailedError

from adapters.hl7v2.ack import parse_ack
from models.review import ReviewAction, ReviewDecision
from tests.support.engine import Engine, mllp_send, running_engine
from tests.support.imaging import (
    acquire_series,
    acquire_study,
    ct_order,
    imaging_exchange_id,
    imaging_order_message,
    radiology_report_message,
    scheduled_patient,
    with_visit_number,
    worklist_answers,
)
from tests.support.modality import ScheduledPatient, series_files, store
from tests.support.orthanc import RunningOrthanc
from workers import sample_messages as sm
from workflows.imaging_order import ImagingOrder


@pytest.fixture(scope="module")
async def imaging_engine(
    temporal_client: Client, fhir_base_url: str, orthanc: RunningOrthanc
) -> AsyncIterator[Engine]:
    async with running_engine(
        temporal_client,
        fhir_base_url,
        task_queue="careweave-imaging-e2e",
        **orthanc.setting_overrides(),
    ) as engine:
        yield engine


async def send(engine: Engine, *messages: str) -> list[str]:
    return [parse_ack(ack)[0] for ack in await mllp_send(engine.mllp_port, list(messages))]


async def written(engine: Engine, workflow_id: str, resource_type: str) -> list[str]:
    refs: list[str] = await engine.handle(workflow_id).query("resources_written")
    return sorted({ref for ref in refs if ref.startswith(f"{resource_type}/")})


async def read(engine: Engine, reference: str) -> dict[str, Any]:
    resource_type, resource_id = reference.split("/")
    return await engine.fhir.read(resource_type, resource_id)


async def studies_of(engine: Engine, study_instance_uid: str) -> list[dict[str, Any]]:
    return await engine.fhir.search(
        "ImagingStudy", {"identifier": f"urn:dicom:uid|urn:oid:{study_instance_uid}"}
    )


async def test_order_worklist_images_study_and_report(
    imaging_engine: Engine, orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    engine, accession = imaging_engine, "ACC-E2E-1"
    order = ct_order("IMG-E2E-1", "MRN8701")
    workflow_id = imaging_exchange_id(engine, accession)
    assert accession not in workflow_id
    # The visit the order was placed in, as an ADT feed would have written it.
    encounter = await engine.fhir.conditional_update(
        {
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": {"code": "OP"},
            "identifier": [{"system": "urn:careweave:visit|HOSP", "value": "V-8701"}],
        },
        "Encounter?identifier=urn:careweave:visit|HOSP|V-8701",
    )
    order_message = with_visit_number(
        imaging_order_message(order, accession, "IMG-E2E-1-O"), "V-8701"
    )
    assert await send(engine, order_message) == ["AA"]
    await engine.wait_for_status(workflow_id, "scheduled")

    [request_ref] = await written(engine, workflow_id, "ServiceRequest")
    service_request = await read(engine, request_ref)
    assert service_request["status"] == "active"
    [answer] = await worklist_answers(orthanc, tmp_path / "find", accession)
    assert answer.PatientID == "MRN8701"
    assert answer.ScheduledProcedureStepSequence[0].Modality == "CT"
    study_uid = str(answer.StudyInstanceUID)

    await acquire_study(orthanc, tmp_path / "images", answer)
    await engine.wait_for_status(workflow_id, "imaged", timeout=90)

    [study_ref] = await written(engine, workflow_id, "ImagingStudy")
    study = await read(engine, study_ref)
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"} in study["identifier"]
    assert any(i["value"] == accession for i in study["identifier"])
    assert study["numberOfSeries"] == 2
    assert study["numberOfInstances"] == 3
    assert [s["numberOfInstances"] for s in study["series"]] == [2, 1]
    assert study["basedOn"] == [{"reference": request_ref}]
    assert study["subject"]["reference"] == service_request["subject"]["reference"]
    assert study["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    [task_ref] = await written(engine, workflow_id, "Task")
    task = await read(engine, task_ref)
    assert (task["status"], task["intent"]) == ("in-progress", "order")
    assert task["basedOn"] == [{"reference": request_ref}]
    assert task["focus"] == {"reference": request_ref}
    assert [o["valueReference"]["reference"] for o in task["output"]] == [study_ref]
    [endpoint_ref] = await written(engine, workflow_id, "Endpoint")
    assert study["endpoint"] == [{"reference": endpoint_ref}]
    endpoint = await read(engine, endpoint_ref)
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    async with httpx.AsyncClient(auth=orthanc.auth, timeout=10) as http:
        metadata = await http.get(f"{endpoint['address']}/studies/{study_uid}/metadata")
    assert metadata.status_code == 200
    assert len(metadata.json()) == 3

    report_message = radiology_report_message(order, accession, "IMG-E2E-1-R")
    assert await send(engine, report_message) == ["AA"]
    await engine.wait_for_status(workflow_id, "completed")
    [report_ref] = await written(engine, workflow_id, "DiagnosticReport")
    report = await read(engine, report_ref)
    assert report["imagingStudy"] == [{"reference": study_ref}]
    assert report["status"] == "final"
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    # The report's own work-queue Task (the lab map's) is written beside it: still one
    # fulfilment Task, now a new version of it.
    assert task_ref in await written(engine, workflow_id, "Task")
    completed = await read(engine, task_ref)
    assert completed["status"] == "completed"
    assert [o["valueReference"]["reference"] for o in completed["output"]] == [
        study_ref,
        report_ref,
    ]
    assert (await read(engine, request_ref))["status"] == "active"
    summary = await engine.client.get_workflow_handle_for(ImagingOrder.run, workflow_id).result()
    assert summary.status == "completed"
    assert summary.studies_published == 1


async def test_a_late_series_updates_the_same_imaging_study(
    imaging_engine: Engine, orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    engine, accession = imaging_engine, "ACC-E2E-4"
    workflow_id = imaging_exchange_id(engine, accession)
    order = ct_order("IMG-E2E-4", "MRN8704")
    assert await send(engine, imaging_order_message(order, accession, "IMG-E2E-4-O")) == ["AA"]
    await engine.wait_for_status(workflow_id, "scheduled")
    [answer] = await worklist_answers(orthanc, tmp_path / "find", accession)
    study_uid = str(answer.StudyInstanceUID)
    await acquire_study(orthanc, tmp_path / "images", answer)
    await engine.wait_for_status(workflow_id, "imaged", timeout=90)
    [first] = await studies_of(engine, study_uid)
    assert first["numberOfSeries"] == 2

    # A third series after the study was stable: Orthanc reports it stable again.
    await acquire_series(orthanc, tmp_path / "late", answer, series_number=3, instances=2)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while (found := await studies_of(engine, study_uid)) and found[0]["numberOfSeries"] < 3:
        assert loop.time() < deadline, "the late series never reached the ImagingStudy"
        await asyncio.sleep(0.5)
    [updated] = found
    assert updated["id"] == first["id"]
    assert updated["numberOfInstances"] == 5
    assert updated["meta"]["versionId"] != first["meta"]["versionId"]
    assert len(await engine.fhir.history("ImagingStudy", first["id"])) == 2
    assert len(await written(engine, workflow_id, "ImagingStudy")) == 1


async def test_study_naming_another_patient_waits_for_a_reviewer(
    imaging_engine: Engine, orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    engine, accession = imaging_engine, "ACC-E2E-2"
    workflow_id = imaging_exchange_id(engine, accession)
    order = ct_order("IMG-E2E-2", "MRN8702")
    assert await send(engine, imaging_order_message(order, accession, "IMG-E2E-2-O")) == ["AA"]
    await engine.wait_for_status(workflow_id, "scheduled")
    [answer] = await worklist_answers(orthanc, tmp_path / "find", accession)
    other = scheduled_patient(answer)
    other = type(other)(**{**other.__dict__, "patient_id": "MRN8799"})

    await acquire_study(orthanc, tmp_path / "images", answer, patient=other)
    pending = await engine.wait_for_review(workflow_id, timeout=90)
    assert pending["reason"] == "patient-mismatch"
    assert "PatientID" in pending["summary"]
    assert "MRN8799" not in pending["summary"]
    assert await studies_of(engine, str(answer.StudyInstanceUID)) == []
    assert await engine.handle(workflow_id).query("status") == "scheduled"

    await engine.decide_review(
        workflow_id,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.REJECT,
            reason="images of another patient: sent back to the modality",
            reviewer="radiographer-1",
        ),
    )
    await engine.wait_for_status(workflow_id, "scheduled")
    assert await engine.handle(workflow_id).query("pending_review") is None
    assert await studies_of(engine, str(answer.StudyInstanceUID)) == []
    assert await written(engine, workflow_id, "ImagingStudy") == []


async def test_cancel_removes_the_worklist_entry_and_revokes_the_order(
    imaging_engine: Engine, orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    engine, accession = imaging_engine, "ACC-E2E-3"
    workflow_id = imaging_exchange_id(engine, accession)
    order = ct_order("IMG-E2E-3", "MRN8703")
    assert await send(engine, imaging_order_message(order, accession, "IMG-E2E-3-O")) == ["AA"]
    await engine.wait_for_status(workflow_id, "scheduled")
    assert len(await worklist_answers(orthanc, tmp_path / "before", accession)) == 1

    cancel = imaging_order_message(order, accession, "IMG-E2E-3-C", order_control="CA")
    assert await send(engine, cancel) == ["AA"]
    await engine.wait_for_status(workflow_id, "cancelled")
    assert await worklist_answers(orthanc, tmp_path / "after", accession) == []
    [request_ref] = await written(engine, workflow_id, "ServiceRequest")
    assert (await read(engine, request_ref))["status"] == "revoked"


async def test_a_study_no_order_claims_goes_to_review_after_the_wait(
    imaging_engine: Engine, orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    engine, accession = imaging_engine, "ACC-E2E-ORPHAN"
    workflow_id = imaging_exchange_id(engine, accession)
    patient = ScheduledPatient("MRN8705", "Orphan", "Olle", date(1955, 5, 5), "M")
    files = series_files(
        tmp_path / "images",
        patient=patient,
        accession_number=accession,
        study_instance_uid=generate_uid(),
        series_number=1,
        instances=1,
    )
    await asyncio.to_thread(store, orthanc, files)

    pending = await engine.wait_for_review(workflow_id, timeout=90)
    assert pending["reason"] == "unknown-order"
    assert await engine.handle(workflow_id).query("status") == "awaiting-order"
    assert await written(engine, workflow_id, "ImagingStudy") == []
    await engine.decide_review(
        workflow_id,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.REJECT,
            reason="test images from the modality's service engineer",
            reviewer="radiographer-2",
        ),
    )
    summary = await engine.client.get_workflow_handle_for(ImagingOrder.run, workflow_id).result()
    assert (summary.status, summary.studies_published) == ("rejected", 0)


async def test_a_study_no_order_claims_is_published_for_its_own_patient_once_approved(
    imaging_engine: Engine, orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    engine, accession = imaging_engine, "ACC-E2E-ORPHAN-2"
    workflow_id = imaging_exchange_id(engine, accession)
    patient = ScheduledPatient("MRN8706", "Orphan", "Anna", date(1957, 6, 7), "F")
    study_uid = generate_uid()
    files = series_files(
        tmp_path / "images",
        patient=patient,
        accession_number=accession,
        study_instance_uid=study_uid,
        series_number=1,
        instances=2,
    )
    await asyncio.to_thread(store, orthanc, files)

    # No Patient has the study's PatientID yet: approve is refused, saying why.
    first = await engine.wait_for_review(workflow_id, timeout=90)
    assert first["reason"] == "unknown-order"
    assert "no Patient has the study's PatientID" in str(first["summary"])
    assert "MRN8706" not in str(first["summary"])
    assert set(first["actions"]) == {"reject", "retry"}
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await engine.decide_review(
            workflow_id,
            ReviewDecision(
                review_id=str(first["review_id"]),
                action=ReviewAction.APPROVE,
                reason="the patient is ours",
                reviewer="radiographer-3",
            ),
        )
    assert "approve is refused: no Patient has the study's PatientID" in str(refused.value.cause)
    assert await studies_of(engine, study_uid) == []

    # Registration writes the patient (as patient-sync would); the reviewer looks again.
    registered = await engine.fhir.conditional_update(
        {
            "resourceType": "Patient",
            "identifier": [
                {"system": f"urn:careweave:patient-id:{sm.HOSPITAL}", "value": "MRN8706"}
            ],
            "name": [{"family": "Orphan", "given": ["Anna"]}],
            "birthDate": "1957-06-07",
        },
        f"Patient?identifier=urn:careweave:patient-id:{sm.HOSPITAL}|MRN8706",
    )
    await engine.decide_review(
        workflow_id,
        ReviewDecision(
            review_id=str(first["review_id"]),
            action=ReviewAction.RETRY,
            reason="registered at the front desk",
            reviewer="radiographer-3",
        ),
    )
    second = await engine.wait_for_review(workflow_id, timeout=30)
    assert second["review_id"] == "r2"
    assert set(second["actions"]) == {"reject", "approve"}
    assert second["context"]["subject_reference"] == f"Patient/{registered['id']}"
    await engine.decide_review(
        workflow_id,
        ReviewDecision(
            review_id=str(second["review_id"]),
            action=ReviewAction.APPROVE,
            reason="walk-in CT, order to follow on paper",
            reviewer="radiographer-3",
        ),
    )
    await engine.wait_for_status(workflow_id, "imaged")
    [study] = await studies_of(engine, study_uid)
    assert study["subject"] == {"reference": f"Patient/{registered['id']}"}
    assert "basedOn" not in study
    assert any(i["value"] == accession for i in study["identifier"])
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (1, 2)
    assert await written(engine, workflow_id, "ImagingStudy") == [f"ImagingStudy/{study['id']}"]
    assert await written(engine, workflow_id, "ServiceRequest") == []

    # The radiologist's report for that accession links the study and ends the exchange.
    order = sm.SampleOrder(
        "IMG-E2E-6",
        local_code="CTCHEST",
        text="CT chest without contrast",
        patient=sm.SamplePatient(
            mrn="MRN8706", family="Orphan", given="Anna", birth_date="19570607"
        ),
    )
    report = radiology_report_message(order, accession, "IMG-E2E-6-R")
    assert await send(engine, report) == ["AA"]
    await engine.wait_for_status(workflow_id, "completed")
    [report_ref] = await written(engine, workflow_id, "DiagnosticReport")
    published = await read(engine, report_ref)
    assert published["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert published["subject"]["reference"] == f"Patient/{registered['id']}"
    summary = await engine.client.get_workflow_handle_for(ImagingOrder.run, workflow_id).result()
    assert (summary.status, summary.studies_published) == ("completed", 1)
