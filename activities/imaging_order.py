"""Activities of imaging order-to-result. Small and idempotent; only uids and header
metadata go in and out (pixel data stays in the PACS). The lab half is reused as is: the
order is read by interpret_lab_order and the report by interpret_lab_result
(activities/order_to_result.py); what is imaging's own is here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.order_to_result import FHIR_REJECTED, LAB_MESSAGE_INVALID, InterpretInput
from adapters.dicom import (
    DicomWebClient,
    OrthancClient,
    PacsRejected,
    StudyGone,
    StudyMetadataInvalid,
    remove_worklist_entry,
    write_worklist_entry,
)
from adapters.fhir import FhirClient
from adapters.fhir.errors import FhirRejectedError
from adapters.hl7v2.imaging_messages import ImagingFields, read_imaging_fields
from adapters.hl7v2.lab_messages import LabMessageInvalid, parse_lab_order
from mappings.fhir_identifiers import identifier_search, qualified_system
from mappings.imaging_order.fhir_imaging import (
    as_imaging_order_transaction,
    endpoint_for,
    fulfillment_task_for,
    fulfillment_task_identifier,
    imaging_study_for,
    modality_for,
    unordered_study_patient,
    worklist_entry_for,
)
from mappings.imaging_order.mapping import load_imaging_mapping
from mappings.order_to_result.concept_map import load_lab_mapping
from mappings.order_to_result.fhir_builders import order_transaction_for, result_transaction_for
from models.imaging import StudyHeader
from models.imaging_events import StudyStable
from models.lab import LabOrder, LabResult

PACS_REJECTED = "PacsRejected"
_SECTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0074"


class InterpretedImagingOrder(BaseModel):
    order: LabOrder
    imaging: ImagingFields
    mapping_version: str


class ScheduleInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    order: LabOrder
    imaging: ImagingFields
    mapping_version: str
    lab_mapping_version: str
    # The .wl file's name: the exchange's accession pseudonym, never the number.
    worklist_name: str


class Scheduled(BaseModel):
    """Logical ids only (no PHI): what the study and the report will reference."""

    resources: list[str]
    subject_reference: str = ""
    service_request_reference: str = ""
    study_instance_uid: str = ""


class ReadStudyInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    study_instance_uid: str


class PublishStudyInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    header: StudyHeader
    accession_number: str
    accession_issuer: str
    subject_reference: str
    service_request_reference: str | None
    mapping_version: str
    # The order's visit (PV1-19): the study's encounter when the FHIR server knows it.
    visit_number: str = ""


class FindStudyPatientInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    header: StudyHeader
    # The lab map names the Patient identifier system the order exchanges write.
    lab_mapping_version: str


class StudyPatient(BaseModel):
    """The one Patient a study without an order may be published for, or why none."""

    subject_reference: str = ""
    not_found: str = ""


class TrackFulfillmentInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    accession_number: str
    accession_issuer: str
    status: str
    service_request_reference: str
    subject_reference: str
    outputs: list[str]
    mapping_version: str


class PublishReportInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    result: LabResult
    lab_mapping_version: str
    imaging_study_reference: str | None


class PublishedResources(BaseModel):
    resources: list[str]


class FollowFeedInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    position: int
    page_size: int = 100


class FollowedFeed(BaseModel):
    position: int
    announced: int
    # StableStudy changes whose study was deleted before it could be read (reported, not
    # waited on).
    gone: int


def _rejected(err: FhirRejectedError) -> ApplicationError:
    return ApplicationError(
        f"HTTP {err.status_code}: {err.diagnostics}", type=FHIR_REJECTED, non_retryable=True
    )


def _locations(bundle: dict[str, Any]) -> list[str]:
    return [
        "/".join(location.split("/")[:2])
        for entry in bundle.get("entry") or []
        if (location := (entry.get("response") or {}).get("location", ""))
    ]


@activity.defn
def interpret_imaging_order(request: InterpretInput) -> InterpretedImagingOrder:
    """The lab reader's order plus the imaging fields (accession, section, schedule)."""
    try:
        order = parse_lab_order(request.message.text)
        imaging = read_imaging_fields(request.message.text)
    except LabMessageInvalid as err:
        raise ApplicationError(str(err), type=LAB_MESSAGE_INVALID, non_retryable=True) from err
    return InterpretedImagingOrder(
        order=order, imaging=imaging, mapping_version=request.mapping_version
    )


class ImagingActivities:
    """The FHIR writes and the PACS's worklist and DICOMweb reads of imaging exchanges."""

    def __init__(self, fhir: FhirClient, dicomweb: DicomWebClient, worklist_dir: Path) -> None:
        self._fhir = fhir
        self._dicomweb = dicomweb
        self._worklist_dir = worklist_dir

    @activity.defn(name="schedule_imaging_order")
    async def schedule_imaging_order(self, request: ScheduleInput) -> Scheduled:
        """ServiceRequest (and the Patient, created if absent) in one transaction, then the
        worklist entry; a cancel revokes the ServiceRequest and removes the entry. Both
        are keyed (identifier, file name), so a retry rewrites the same things."""
        mapping = load_imaging_mapping(request.mapping_version)
        lab_mapping = load_lab_mapping(request.lab_mapping_version)
        bundle = as_imaging_order_transaction(order_transaction_for(request.order, lab_mapping))
        try:
            # Fenced: a new order the server applies late cannot un-revoke its cancel.
            response = await self._fhir.fenced_transaction(bundle, "ServiceRequest")
        except FhirRejectedError as err:
            raise _rejected(err) from err
        resources = _locations(response)
        subject = next((r for r in resources if r.startswith("Patient/")), "")
        service_request = next((r for r in resources if r.startswith("ServiceRequest/")), "")
        if request.order.is_cancel:
            remove_worklist_entry(self._worklist_dir, request.worklist_name)
            return Scheduled(
                resources=resources,
                subject_reference=subject,
                service_request_reference=service_request,
            )
        imaging = request.imaging
        entry = worklist_entry_for(
            request.order,
            accession_number=imaging.accession_number,
            modality=modality_for(imaging.diagnostic_section, imaging.procedure_code, mapping),
            scheduled_start=imaging.scheduled_start,
            mapping=mapping,
        )
        write_worklist_entry(self._worklist_dir, request.worklist_name, entry)
        return Scheduled(
            resources=resources,
            subject_reference=subject,
            service_request_reference=service_request,
            study_instance_uid=entry.study_instance_uid,
        )

    @activity.defn(name="read_imaging_study")
    async def read_imaging_study(self, request: ReadStudyInput) -> StudyHeader:
        """The study's header metadata over WADO-RS (no pixel data)."""
        try:
            return await self._dicomweb.study_headers(request.study_instance_uid)
        except (PacsRejected, StudyMetadataInvalid) as err:
            raise ApplicationError(str(err), type=PACS_REJECTED, non_retryable=True) from err

    @activity.defn(name="find_study_patient")
    async def find_study_patient(self, request: FindStudyPatientInput) -> StudyPatient:
        """The Patient a study without an order belongs to: found by the header's PatientID
        and confirmed by its name and birth date, or why not (never a guess). Read only."""
        header = request.header
        if not header.patient_id:
            return StudyPatient(not_found=unordered_study_patient(header, [], "")[1])
        patient_system = load_lab_mapping(request.lab_mapping_version).identifier_system("patient")
        token = (
            f"{qualified_system(patient_system, header.patient_id_issuer)}|{header.patient_id}"
            if header.patient_id_issuer
            else header.patient_id
        )
        try:
            patients = await self._fhir.search("Patient", {"identifier": token})
        except FhirRejectedError as err:
            raise _rejected(err) from err
        patient, doubt = unordered_study_patient(header, patients, patient_system)
        if patient is None:
            return StudyPatient(not_found=doubt)
        return StudyPatient(subject_reference=f"Patient/{patient['id']}")

    @activity.defn(name="publish_imaging_study")
    async def publish_imaging_study(self, request: PublishStudyInput) -> PublishedResources:
        """The PACS's Endpoint and the ImagingStudy, each a conditional PUT on its
        identifier: a late series updates the same ImagingStudy (a new version)."""
        mapping = load_imaging_mapping(request.mapping_version)
        endpoint = endpoint_for(self._dicomweb.base_url, mapping)
        try:
            written_endpoint = await self._fhir.conditional_update(
                endpoint, identifier_search("Endpoint", endpoint["identifier"][0])
            )
            endpoint_reference = f"Endpoint/{written_endpoint['id']}"
            encounter_reference = await self._known_encounter(request.visit_number)
            study = imaging_study_for(
                request.header,
                accession_number=request.accession_number,
                accession_issuer=request.accession_issuer,
                subject_reference=request.subject_reference,
                service_request_reference=request.service_request_reference,
                endpoint_reference=endpoint_reference,
                mapping=mapping,
                encounter_reference=encounter_reference,
            )
            written = await self._fhir.conditional_update(
                study, identifier_search("ImagingStudy", study["identifier"][0])
            )
        except FhirRejectedError as err:
            raise _rejected(err) from err
        return PublishedResources(resources=[endpoint_reference, f"ImagingStudy/{written['id']}"])

    async def _known_encounter(self, visit_number: str) -> str | None:
        """The Encounter of the order's visit when exactly one has that identifier value
        (an ADT feed wrote it, under its issuer's system); else none rather than a guess."""
        if not visit_number:
            return None
        found = await self._fhir.search("Encounter", {"identifier": visit_number})
        return f"Encounter/{found[0]['id']}" if len(found) == 1 else None

    @activity.defn(name="track_imaging_fulfillment")
    async def track_imaging_fulfillment(self, request: TrackFulfillmentInput) -> PublishedResources:
        """The order's fulfilment Task, a conditional PUT on its identifier (the accession):
        each step writes a new version of the same Task."""
        mapping = load_imaging_mapping(request.mapping_version)
        task = fulfillment_task_for(
            accession_number=request.accession_number,
            accession_issuer=request.accession_issuer,
            status=request.status,
            service_request_reference=request.service_request_reference,
            subject_reference=request.subject_reference,
            outputs=request.outputs,
            mapping=mapping,
        )
        identifier = fulfillment_task_identifier(
            request.accession_number, request.accession_issuer, mapping
        )
        try:
            written = await self._fhir.conditional_update(
                task, identifier_search("Task", identifier)
            )
        except FhirRejectedError as err:
            raise _rejected(err) from err
        return PublishedResources(resources=[f"Task/{written['id']}"])

    @activity.defn(name="publish_imaging_report")
    async def publish_imaging_report(self, request: PublishReportInput) -> PublishedResources:
        """The lab map's report transaction, its DiagnosticReport pointing at the study."""
        bundle = result_transaction_for(
            request.result, load_lab_mapping(request.lab_mapping_version)
        )
        for entry in bundle["entry"]:
            report = entry["resource"]
            if report["resourceType"] != "DiagnosticReport":
                continue
            # The lab map says LAB; a radiology report is RAD (HL7 table 0074), which is
            # how worklists and apps tell imaging reports from lab ones.
            report["category"] = [{"coding": [{"system": _SECTION_SYSTEM, "code": "RAD"}]}]
            if request.imaging_study_reference:
                report["imagingStudy"] = [{"reference": request.imaging_study_reference}]
        try:
            # Fenced: a report the server applies late cannot undo its correction.
            response = await self._fhir.fenced_transaction(bundle, "DiagnosticReport")
        except FhirRejectedError as err:
            raise _rejected(err) from err
        return PublishedResources(resources=_locations(response))


Announce = Callable[[StudyStable], Awaitable[None]]


class PacsFeedActivities:
    """Follows Orthanc's change feed; ``announce`` signal-with-starts the study's imaging
    exchange (given by the exchange spec, which knows workflow ids)."""

    def __init__(self, orthanc: OrthancClient, announce: Announce) -> None:
        self._orthanc = orthanc
        self._announce = announce

    @activity.defn(name="follow_pacs_changes")
    async def follow_pacs_changes(self, request: FollowFeedInput) -> FollowedFeed:
        """One page of changes after ``position``: every StableStudy announced, in feed
        order. Retried after a crash, a page is announced again: the exchange drops a
        change seq it has seen, so nothing is repeated, and nothing is skipped."""
        page = await self._orthanc.changes(request.position, request.page_size)
        announced = gone = 0
        for change in page.changes:
            if change.change_type != "StableStudy":
                continue
            try:
                study_uid, accession = await self._orthanc.study_keys(change.orthanc_id)
            except StudyGone:
                gone += 1
                activity.logger.warning("a study deleted before it was read (seq %s)", change.seq)
                continue
            await self._announce(
                StudyStable(
                    change_seq=change.seq,
                    study_instance_uid=study_uid,
                    accession_number=accession,
                )
            )
            announced += 1
        return FollowedFeed(position=page.last, announced=announced, gone=gone)
