"""Pure builders: an AdtEvent -> one FHIR R4 transaction (Patient, Encounter, Conditions).

Every entry is a conditional write on a business identifier (patient id with its
authority, visit number, visit number + DG1 set id), so a retried delivery, a resent
message or an A08 that amends a diagnosis updates the same resources instead of
creating new ones: a PUT, except the Patient from mapping v3 on (a conditional create,
so what other sources wrote on it survives the discharge). ``fullUrl`` uuids are uuid5
of those identifiers: the same event always gives the same JSON. Each resource is
validated with ``fhir.resources.R4B`` before it is returned, so an invalid resource never
reaches a FHIR server.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient
from pydantic import BaseModel

from mappings.discharge_sync.mapping import PATIENT_CREATE_IF_ABSENT, AdtMapping, CodedValue
from mappings.fhir_identifiers import (
    conditional_url,
    identifier_query,
    patient_query,
    qualified_system,
)
from mappings.fhir_identifiers import patient_identifier as _patient_identifier
from mappings.fhir_validation import validate_resource
from models.discharge import AdtEvent, AdtTrigger, Diagnosis, DischargeOnRecord, Practitioner

__all__ = [
    "condition_identifier",
    "encounter_identifier",
    "encounter_transaction_for",
    "is_discharged",
    "patient_identifier",
]

JSON = dict[str, Any]
_UUID_NAMESPACE = uuid.UUID("2d0f8a4e-6c1b-5f3a-9e27-b84c1d5a7e60")
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"


# --- identifiers -------------------------------------------------------------------


def _encounter_issuer(event: AdtEvent) -> str:
    # PV1-19.4 issued the visit number; an account number (PID-18) or a visit
    # number without CX-4 is unique only within the sending facility.
    issuer = event.visit_number_authority if event.visit_number else ""
    return issuer or event.sending_facility


def patient_identifier(event: AdtEvent, mapping: AdtMapping) -> JSON:
    """Patient.identifier; built exactly as lab resources reference the patient."""
    return _patient_identifier(event.patient, mapping.identifier_system("patient"))


def encounter_identifier(event: AdtEvent, mapping: AdtMapping) -> JSON:
    """Encounter.identifier: the visit number (PV1-19), else the account number (PID-18)."""
    if not event.encounter_number:
        raise ValueError("the event has neither a visit number nor an account number")
    return {
        "system": qualified_system(
            mapping.identifier_system("encounter"), _encounter_issuer(event)
        ),
        "value": event.encounter_number,
    }


def condition_identifier(event: AdtEvent, diagnosis: Diagnosis, mapping: AdtMapping) -> JSON:
    """Condition.identifier: encounter number + DG1-1, so an A08 amending DG1 2 rewrites it."""
    if not event.encounter_number:
        raise ValueError("the event has neither a visit number nor an account number")
    return {
        "system": qualified_system(
            mapping.identifier_system("condition"), _encounter_issuer(event)
        ),
        "value": f"{event.encounter_number}-{diagnosis.set_id}",
    }


def _full_url(identifier: Mapping[str, Any]) -> str:
    return "urn:uuid:" + str(
        uuid.uuid5(_UUID_NAMESPACE, f"{identifier['system']}|{identifier['value']}")
    )


def _put(resource_type: str, identifier: JSON, resource: JSON) -> JSON:
    return {
        "fullUrl": _full_url(identifier),
        "resource": resource,
        "request": {"method": "PUT", "url": conditional_url(resource_type, identifier)},
    }


def _create_if_absent(resource_type: str, identifier: JSON, resource: JSON) -> JSON:
    # The server resolves the fullUrl to the resource it finds or creates, so entries that
    # reference it reach an existing resource without writing it. A Patient retired by a
    # merge is not the one found (fhir_identifiers.patient_query).
    query = patient_query if resource_type == "Patient" else identifier_query
    return {
        "fullUrl": _full_url(identifier),
        "resource": resource,
        "request": {"method": "POST", "url": resource_type, "ifNoneExist": query(identifier)},
    }


def _patient_entry(event: AdtEvent, mapping: AdtMapping, identifier: JSON) -> JSON:
    if mapping.patient_write == PATIENT_CREATE_IF_ABSENT:
        # v3: other sources' telecom, links and identifiers on the Patient stay as they are.
        return _create_if_absent("Patient", identifier, _patient(event, mapping))
    return _put("Patient", identifier, _patient(event, mapping))


# --- small value mappings ------------------------------------------------------------


def is_discharged(event: AdtEvent, mapping: AdtMapping) -> bool:
    """Whether the stay is over: A03, or an A08 that carries a discharge time (PV1-45)
    or (mapping v2 on) comes from an exchange that holds the discharge.

    A13 cancels the discharge, and an A08 before any discharge updates a stay that is
    still going on.
    """
    if event.trigger is AdtTrigger.DISCHARGE:
        return True
    if event.trigger is not AdtTrigger.UPDATE:
        return False
    return event.discharge_time is not None or _discharge_on_record(event, mapping) is not None


def _discharge_on_record(event: AdtEvent, mapping: AdtMapping) -> DischargeOnRecord | None:
    # Only an A08 borrows from the record: an A03 states the discharge itself, an A13
    # cancels it.
    if event.trigger is AdtTrigger.UPDATE and mapping.update_keeps_discharge:
        return event.discharge_on_record
    return None


def _datetime(value: datetime | None, mapping: AdtMapping) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        return value.isoformat()
    if mapping.naive_timestamp_offset:
        return value.isoformat() + mapping.naive_timestamp_offset
    # FHIR requires an offset on a time; the sender gave none (see [time] in the TOML).
    return value.date().isoformat()


def _coding(value: CodedValue) -> JSON:
    return {"system": value.system, "code": value.code}


def _meta(mapping: AdtMapping) -> JSON:
    return {"tag": [{"system": mapping.mapping_tag_system, "code": mapping.mapping_tag_code}]}


def _validated(model: type[BaseModel], resource: JSON) -> JSON:
    # Checked against the model's own definition, compiled once (mappings/fhir_validation):
    # a Bundle's check covers only its own elements, its entries' resources were checked
    # as they were built. No dump and re-read: the JSON is returned as it was validated.
    if resource.get("resourceType") != model.__name__:
        raise ValueError(f"expected a {model.__name__}, got {resource.get('resourceType')}")
    return validate_resource(resource)


def _person_name(family: str, given: str) -> JSON | None:
    name: JSON = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = [given]
    return name or None


# --- resources -----------------------------------------------------------------------


def _patient(event: AdtEvent, mapping: AdtMapping) -> JSON:
    patient = event.patient
    resource: JSON = {
        "resourceType": "Patient",
        "meta": _meta(mapping),
        "identifier": [patient_identifier(event, mapping)],
    }
    name = _person_name(patient.family_name, patient.given_name)
    if name:
        resource["name"] = [name]
    if patient.birth_date:
        resource["birthDate"] = patient.birth_date.isoformat()
    gender = mapping.administrative_sex.get(patient.sex.upper())
    if gender:
        resource["gender"] = gender
    return _validated(Patient, resource)


def _participant(role: str, practitioner: Practitioner | None, mapping: AdtMapping) -> list[JSON]:
    if practitioner is None:
        return []
    # Logical reference by identifier: Practitioner resources are owned by the
    # provider directory, discharge sync never creates them.
    individual: JSON = {"type": "Practitioner"}
    if practitioner.identifier:
        individual["identifier"] = {
            "system": qualified_system(
                mapping.identifier_system("practitioner"), practitioner.assigning_authority
            ),
            "value": practitioner.identifier,
        }
    display = " ".join(p for p in (practitioner.given_name, practitioner.family_name) if p)
    if display:
        individual["display"] = display
    return [
        {
            "type": [{"coding": [{"system": _PARTICIPATION, "code": role}]}],
            "individual": individual,
        }
    ]


def _diagnosis_code(diagnosis: Diagnosis, mapping: AdtMapping) -> JSON:
    system = mapping.diagnosis_system(diagnosis.coding_system)
    if system is None:
        # An unknown coding system is kept as text: a code is never guessed into
        # ICD-10-CM, and the text still shows the receiver what was sent.
        sent = " ".join(p for p in (diagnosis.coding_system, diagnosis.code) if p)
        text = f"{diagnosis.display} ({sent})" if diagnosis.display else sent
        return {"text": text}
    coding: JSON = {"system": system, "code": diagnosis.code}
    if diagnosis.display:
        coding["display"] = diagnosis.display
    return {"coding": [coding], "text": diagnosis.display or diagnosis.code}


def _condition(
    event: AdtEvent,
    diagnosis: Diagnosis,
    mapping: AdtMapping,
    patient_url: str,
    encounter_url: str,
) -> JSON:
    resource: JSON = {
        "resourceType": "Condition",
        "meta": _meta(mapping),
        "identifier": [condition_identifier(event, diagnosis, mapping)],
        "clinicalStatus": {"coding": [{"system": _CONDITION_CLINICAL, "code": "active"}]},
        "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
        "code": _diagnosis_code(diagnosis, mapping),
        "subject": {"reference": patient_url},
        "encounter": {"reference": encounter_url},
    }
    verification = mapping.verification_status(diagnosis.diagnosis_type)
    if verification:
        resource["verificationStatus"] = {"coding": [_coding(verification)]}
    recorded = _datetime(diagnosis.recorded_at, mapping)
    if recorded:
        resource["recordedDate"] = recorded
    return _validated(Condition, resource)


def _encounter_diagnoses(
    event: AdtEvent, mapping: AdtMapping, condition_urls: list[str]
) -> list[JSON]:
    entries: list[JSON] = []
    for diagnosis, url in zip(event.diagnoses, condition_urls, strict=True):
        entry: JSON = {"condition": {"reference": url}}
        use = mapping.diagnosis_role(diagnosis.diagnosis_type)
        if use:
            entry["use"] = {"coding": [_coding(use)]}
        # DG1-15 ranks the diagnoses (1 = primary); 0 means "not ranked", and
        # message order is no ranking, so no rank is invented.
        if diagnosis.priority:
            entry["rank"] = diagnosis.priority
        entries.append(entry)
    return entries


def _encounter(
    event: AdtEvent, mapping: AdtMapping, patient_url: str, condition_urls: list[str]
) -> JSON:
    discharged = is_discharged(event, mapping)
    on_record = _discharge_on_record(event, mapping) or DischargeOnRecord()
    resource: JSON = {
        "resourceType": "Encounter",
        "meta": _meta(mapping),
        "identifier": [encounter_identifier(event, mapping)],
        "status": "finished" if discharged else "in-progress",
        "class": _coding(mapping.encounter_class(event.patient_class)),
        "subject": {"reference": patient_url},
    }
    period: JSON = {}
    start = _datetime(event.admit_time, mapping)
    if start:
        period["start"] = start
    if discharged:
        # An A03 without PV1-45 still ends the stay: EVN-2 (else MSH-7) is when
        # the discharge was recorded, the best time the message gives. An A08
        # without PV1-45 keeps the end on record; its own EVN-2 is not the discharge.
        end = _datetime(event.discharge_time or on_record.ended_at or event.event_time, mapping)
        if end:
            period["end"] = end
    if period:
        resource["period"] = period
    discharge_disposition = event.discharge_disposition or on_record.disposition
    if discharged and discharge_disposition:
        mapped = mapping.disposition(discharge_disposition)
        disposition: JSON = (
            {"coding": [_coding(mapped)], "text": discharge_disposition}
            if mapped
            else {"text": discharge_disposition}
        )
        resource["hospitalization"] = {"dischargeDisposition": disposition}
    if event.location:
        resource["location"] = [{"location": {"display": event.location}}]
    participants = [
        *_participant("ATND", event.attending, mapping),
        *_participant("REF", event.referring, mapping),
        *_participant("ADM", event.admitting, mapping),
    ]
    if participants:
        resource["participant"] = participants
    if condition_urls:
        resource["diagnosis"] = _encounter_diagnoses(event, mapping, condition_urls)
    return _validated(Encounter, resource)


# --- the transaction -------------------------------------------------------------------


def encounter_transaction_for(event: AdtEvent, mapping: AdtMapping) -> JSON:
    """One transaction Bundle that makes FHIR agree with the event (A03, A13 or A08).

    Patient, Encounter, then one Condition per DG1, each a conditional PUT on its
    identifier; from mapping v3 the Patient is a conditional create instead, so that a
    discharge never writes over what other sources put on the Patient. A Condition whose
    DG1 is absent from a later A08 is left as it is: deleting clinical data is not
    something an update message should do silently.
    """
    patient_id = patient_identifier(event, mapping)
    encounter_id = encounter_identifier(event, mapping)
    patient_url = _full_url(patient_id)
    encounter_url = _full_url(encounter_id)
    condition_ids = [condition_identifier(event, d, mapping) for d in event.diagnoses]
    condition_urls = [_full_url(identifier) for identifier in condition_ids]
    entries = [
        _patient_entry(event, mapping, patient_id),
        _put("Encounter", encounter_id, _encounter(event, mapping, patient_url, condition_urls)),
        *(
            _put(
                "Condition",
                identifier,
                _condition(event, diagnosis, mapping, patient_url, encounter_url),
            )
            for diagnosis, identifier in zip(event.diagnoses, condition_ids, strict=True)
        ),
    ]
    bundle: JSON = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return _validated(Bundle, bundle)
