"""Pure functions of imaging order-to-result: which orders are imaging, the worklist entry
of an order, the context check of a study against its order, and DICOM headers -> FHIR R4
ImagingStudy + Endpoint as Microsoft's DICOMcast maps them (identifier urn:dicom:uid =
urn:oid:<StudyInstanceUID>, series and instances by uid, Endpoint dicom-wado-rs).
Every resource is validated against R4 before it leaves (mappings/fhir_validation)."""

from __future__ import annotations

import unicodedata
from datetime import date
from typing import Any

from pydicom.uid import generate_uid

from mappings.fhir_identifiers import qualified_system
from mappings.fhir_validation import validate_resource
from mappings.imaging_order.mapping import ImagingMapping
from models.imaging import StudyHeader, WorklistEntry
from models.lab import LabOrder, PatientRef

JSON = dict[str, Any]
# SNOMED CT 363679005 |Imaging (procedure)|: the ServiceRequest's category.
_IMAGING_CATEGORY = {
    "coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]
}


def is_imaging_order(diagnostic_section: str, procedure_code: str, mapping: ImagingMapping) -> bool:
    """OBR-24 names an imaging section, or OBR-4 a procedure the mapping marks as imaging."""
    return (
        diagnostic_section.strip().upper() in mapping.diagnostic_sections
        or procedure_code.strip() in mapping.procedure_codes
    )


def modality_for(diagnostic_section: str, procedure_code: str, mapping: ImagingMapping) -> str:
    """The DICOM modality the worklist asks for: by procedure first (more precise), then by
    section; "OT" (other) when neither says."""
    return mapping.modality_of_procedure.get(
        procedure_code.strip(),
        mapping.modality_of_section.get(diagnostic_section.strip().upper(), "OT"),
    )


def study_instance_uid_for(accession_number: str, issuer: str) -> str:
    """The Study Instance UID pre-assigned in the worklist: derived from the accession (a
    hash, under pydicom's root), so a retried write schedules the same study."""
    return str(generate_uid(entropy_srcs=["careweave-study", issuer, accession_number]))


def worklist_entry_for(
    order: LabOrder,
    *,
    accession_number: str,
    modality: str,
    scheduled_start: Any,
    mapping: ImagingMapping,
) -> WorklistEntry:
    patient = order.patient
    provider = order.ordering_provider
    return WorklistEntry(
        accession_number=accession_number,
        patient_id=patient.identifier,
        patient_id_issuer=patient.assigning_authority,
        patient_family_name=patient.family_name,
        patient_given_name=patient.given_name,
        patient_birth_date=patient.birth_date,
        patient_sex=patient.sex if patient.sex in ("M", "F", "O") else "",
        study_instance_uid=study_instance_uid_for(accession_number, order.placer_namespace),
        requested_procedure_id=accession_number[:16],
        requested_procedure_code=order.requested_test.code,
        requested_procedure_code_system=order.requested_test.system,
        requested_procedure_description=order.requested_test.text,
        modality=modality,
        scheduled_station_aet=mapping.station_of_modality.get(
            modality, mapping.station_of_modality.get("default", "")
        ),
        scheduled_start=scheduled_start,
        referring_physician_family_name=provider.family_name if provider else "",
        referring_physician_given_name=provider.given_name if provider else "",
    )


def as_imaging_order_transaction(lab_transaction: JSON) -> JSON:
    """The lab order transaction (order_to_result's builders: Patient + ServiceRequest)
    with the ServiceRequest's category made imaging; everything else is the lab map's."""
    for entry in lab_transaction.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "ServiceRequest":
            resource["category"] = [_IMAGING_CATEGORY]
    return lab_transaction


def _folded(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).strip().casefold()


def context_mismatches(header: StudyHeader, patient: PatientRef) -> list[str]:
    """The DICOM attributes that name another patient than the order's: PatientID, name
    (family and given, accents and case aside), birth date. Empty in the header is not a
    mismatch (many modalities leave birth date out); names of fields only, never values."""
    found: list[str] = []
    if header.patient_id and header.patient_id != patient.identifier:
        found.append("PatientID")
    if (
        header.patient_family_name
        and patient.family_name
        and (
            _folded(header.patient_family_name) != _folded(patient.family_name)
            or (
                header.patient_given_name
                and patient.given_name
                and _folded(header.patient_given_name) != _folded(patient.given_name)
            )
        )
    ):
        found.append("PatientName")
    if (
        header.patient_birth_date
        and patient.birth_date
        and header.patient_birth_date != patient.birth_date
    ):
        found.append("PatientBirthDate")
    return found


def patient_ref_of(patient: JSON, patient_id: str) -> PatientRef:
    """A FHIR Patient as a PatientRef, for the context check: its first name (official
    first, FHIR HumanName.use) and birth date; ``patient_id`` is the identifier it was
    found by."""
    names = sorted(patient.get("name") or [], key=lambda name: name.get("use") != "official")
    name = names[0] if names else {}
    birth_date = patient.get("birthDate", "")
    return PatientRef(
        identifier=patient_id,
        family_name=name.get("family", ""),
        given_name=" ".join(name.get("given") or []),
        birth_date=date.fromisoformat(birth_date) if len(birth_date) == 10 else None,
    )


def unordered_study_patient(
    header: StudyHeader, patients: list[JSON], patient_system: str
) -> tuple[JSON | None, str]:
    """The one of ``patients`` (the FHIR Patients found by the header's PatientID) a study
    without an order may be published for, or None and why not. Never a guess:
    the Patient must be the only active one holding PatientID as a patient identifier
    (``patient_system``, under the header's issuer when it names one), and the header must
    name the patient (PatientName) as that Patient does, birth date too when both have
    one. Field names and counts only, never values."""
    if not header.patient_id:
        return None, "the study's header has no PatientID"
    if not header.patient_family_name:
        return None, "the study's header has no PatientName to confirm the patient with"
    systems = (
        {qualified_system(patient_system, header.patient_id_issuer)}
        if header.patient_id_issuer
        else None
    )

    def holds_patient_id(patient: JSON) -> bool:
        return any(
            identifier.get("value") == header.patient_id
            and (
                identifier.get("system") in systems
                if systems is not None
                else str(identifier.get("system", "")).startswith(patient_system)
            )
            for identifier in patient.get("identifier") or []
        )

    # A Patient retired by a merge (active=false) keeps its identifiers, and the survivor
    # holds them as old ones: only the survivor is the patient today.
    holders = [p for p in patients if p.get("active") is not False and holds_patient_id(p)]
    if not holders:
        return None, "no Patient has the study's PatientID"
    if len(holders) > 1:
        return None, f"{len(holders)} Patients have the study's PatientID"
    found = patient_ref_of(holders[0], header.patient_id)
    if not found.family_name:
        return None, "the Patient with the study's PatientID has no name to confirm it with"
    mismatches = context_mismatches(header, found)
    if mismatches:
        return None, "the Patient with the study's PatientID has another " + " and ".join(
            mismatches
        )
    return holders[0], ""


def study_identifier(study_instance_uid: str, mapping: ImagingMapping) -> JSON:
    return {"system": mapping.systems["dicom_uid"], "value": f"urn:oid:{study_instance_uid}"}


def accession_identifier(accession_number: str, issuer: str, mapping: ImagingMapping) -> JSON:
    study = mapping.imaging_study
    return {
        "type": {
            "coding": [
                {"system": study["accession_type_system"], "code": study["accession_type_code"]}
            ]
        },
        "system": qualified_system(mapping.systems["accession"], issuer),
        "value": accession_number,
    }


def endpoint_identifier(mapping: ImagingMapping) -> JSON:
    return {
        "system": mapping.endpoint["identifier_system"],
        "value": mapping.endpoint["identifier_value"],
    }


def endpoint_for(dicomweb_base_url: str, mapping: ImagingMapping) -> JSON:
    """The PACS's DICOMweb root as an Endpoint (one for every study it holds)."""
    endpoint = mapping.endpoint
    return validate_resource(
        {
            "resourceType": "Endpoint",
            "meta": _meta(mapping),
            "identifier": [endpoint_identifier(mapping)],
            "status": "active",
            "connectionType": {
                "system": endpoint["connection_type_system"],
                "code": endpoint["connection_type"],
            },
            "name": endpoint["name"],
            "payloadType": [{"text": endpoint["payload_type_text"]}],
            "payloadMimeType": [endpoint["payload_mime_type"]],
            "address": dicomweb_base_url.rstrip("/"),
        }
    )


def imaging_study_for(
    header: StudyHeader,
    *,
    accession_number: str,
    accession_issuer: str,
    subject_reference: str,
    service_request_reference: str | None,
    endpoint_reference: str,
    mapping: ImagingMapping,
    encounter_reference: str | None = None,
) -> JSON:
    """ImagingStudy of a stored study. Its identity is the Study Instance UID: written with
    a conditional PUT on that identifier, a series that arrives later updates it."""
    study = mapping.imaging_study
    modality_codes = list(dict.fromkeys(s.modality for s in header.series if s.modality))
    resource: JSON = {
        "resourceType": "ImagingStudy",
        "meta": _meta(mapping),
        "identifier": [
            study_identifier(header.study_instance_uid, mapping),
            # A study stored without one (an unordered study a reviewer published) has none.
            *(
                [accession_identifier(accession_number, accession_issuer, mapping)]
                if accession_number
                else []
            ),
        ],
        "status": study["status"],
        "subject": {"reference": subject_reference},
        "endpoint": [{"reference": endpoint_reference}],
        "numberOfSeries": len(header.series),
        "numberOfInstances": header.number_of_instances,
        "series": [_series(series, endpoint_reference, mapping) for series in header.series],
    }
    if modality_codes:
        resource["modality"] = [
            {"system": study["modality_system"], "code": code} for code in modality_codes
        ]
    if service_request_reference:
        resource["basedOn"] = [{"reference": service_request_reference}]
    if encounter_reference:
        resource["encounter"] = {"reference": encounter_reference}
    if header.started is not None:
        # FHIR wants a zone with a time; DICOM StudyTime is local time without one (unless
        # TimezoneOffsetFromUTC is read into ``started``): then the day alone, never a
        # guessed zone.
        started = header.started
        resource["started"] = (
            started.isoformat() if started.tzinfo is not None else started.date().isoformat()
        )
    if header.description:
        resource["description"] = header.description
    return validate_resource(resource)


_TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"


def fulfillment_task_identifier(
    accession_number: str, issuer: str, mapping: ImagingMapping
) -> JSON:
    return {
        "system": qualified_system(mapping.systems["fulfillment_task"], issuer),
        "value": accession_number,
    }


def fulfillment_task_for(
    *,
    accession_number: str,
    accession_issuer: str,
    status: str,
    service_request_reference: str,
    subject_reference: str,
    outputs: list[str],
    mapping: ImagingMapping,
) -> JSON:
    """The order's fulfilment Task (code ``fulfill``, focus and basedOn the ServiceRequest):
    in-progress once its study is in the PACS, completed with the final report. The
    ServiceRequest itself stays active, as lab order-to-result leaves it: the Task says how
    far the order got, and ``output`` points at what it produced."""
    task: JSON = {
        "resourceType": "Task",
        "meta": _meta(mapping),
        "identifier": [fulfillment_task_identifier(accession_number, accession_issuer, mapping)],
        "basedOn": [{"reference": service_request_reference}],
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": _TASK_CODE_SYSTEM, "code": "fulfill"}]},
        "focus": {"reference": service_request_reference},
        "for": {"reference": subject_reference},
    }
    if outputs:
        task["output"] = [
            {"type": {"text": reference.split("/")[0]}, "valueReference": {"reference": reference}}
            for reference in outputs
        ]
    return validate_resource(task)


def _series(series: Any, endpoint_reference: str, mapping: ImagingMapping) -> JSON:
    study = mapping.imaging_study
    built: JSON = {
        "uid": series.series_instance_uid,
        "modality": {"system": study["modality_system"], "code": series.modality or "OT"},
        "numberOfInstances": len(series.instances),
        "endpoint": [{"reference": endpoint_reference}],
        "instance": [
            {
                "uid": instance.sop_instance_uid,
                "sopClass": {
                    "system": study["sop_class_system"],
                    "code": f"urn:oid:{instance.sop_class_uid}",
                },
                **(
                    {"number": instance.instance_number}
                    if instance.instance_number is not None
                    else {}
                ),
            }
            for instance in series.instances
        ],
    }
    if series.series_number is not None:
        built["number"] = series.series_number
    if series.description:
        built["description"] = series.description
    if series.body_part_examined:
        built["bodySite"] = {
            "system": study["body_part_system"],
            "code": series.body_part_examined,
            "display": series.body_part_examined.title(),
        }
    return built


def _meta(mapping: ImagingMapping) -> JSON:
    return {"tag": [{"system": mapping.tag_system, "code": mapping.tag_code}]}
