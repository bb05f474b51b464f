"""Pure builders: an AdtEvent -> one FHIR R4 transaction (Patient, Encounter, Conditions).

Every entry is a conditional PUT on a business identifier (MRN with its authority, visit
number, visit number + DG1 set id), so a retried delivery, a resent message or an A08
that amends a diagnosis updates the same resources instead of creating new ones.
fullUrls are uuid5 of those identifiers: the same event always gives the same JSON.
Each resource is validated with fhir.resources R4B before it is sent.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient
from pydantic import BaseModel

from mappings.discharge.mapping import DischargeMapping
from models.discharge import AdtEvent, AdtTrigger, Diagnosis, Practitioner

__all__ = ["encounter_identifier", "encounter_transaction_for"]

JSON = dict[str, Any]
_NAMESPACE = uuid.UUID("0b6f3d2c-9a41-5e8b-8c1d-4f2a7e6b9c30")
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown"}


def _system(base: str, authority: str) -> str:
    return f"{base}:{quote(authority, safe='')}" if authority else base


def patient_identifier(event: AdtEvent, mapping: DischargeMapping) -> JSON:
    authority = event.patient.assigning_authority or event.sending_facility
    return {
        "system": _system(mapping.identifier_systems["patient"], authority),
        "value": event.patient.identifier,
    }


def encounter_identifier(event: AdtEvent, mapping: DischargeMapping) -> JSON:
    if not event.encounter_number:
        raise ValueError("the event has neither a visit number nor an account number")
    authority = (
        event.visit_number_authority if event.visit_number else ""
    ) or event.sending_facility
    return {
        "system": _system(mapping.identifier_systems["encounter"], authority),
        "value": event.encounter_number,
    }


def _condition_identifier(event: AdtEvent, diagnosis: Diagnosis, mapping: DischargeMapping) -> JSON:
    # Keyed by encounter + DG1 set id: an A08 that amends diagnosis 2 updates Condition 2.
    encounter = encounter_identifier(event, mapping)
    authority = encounter["system"].removeprefix(mapping.identifier_systems["encounter"])
    return {
        "system": mapping.identifier_systems["condition"] + authority,
        "value": f"{encounter['value']}/{diagnosis.set_id}",
    }


def _full_url(identifier: JSON) -> str:
    return "urn:uuid:" + str(
        uuid.uuid5(_NAMESPACE, f"{identifier['system']}|{identifier['value']}")
    )


def _conditional_put(resource_type: str, identifier: JSON, resource: JSON) -> JSON:
    token = quote(f"{identifier['system']}|{identifier['value']}", safe="")
    return {
        "fullUrl": _full_url(identifier),
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource_type}?identifier={token}"},
    }


def _when(value: datetime | None, mapping: DischargeMapping) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        return value.isoformat()
    if mapping.naive_timestamp_offset:
        return value.isoformat() + mapping.naive_timestamp_offset
    return value.date().isoformat()


def _validated(model: type[BaseModel], resource: JSON) -> JSON:
    dumped: JSON = model.model_validate(resource).model_dump(mode="json", exclude_none=True)
    return dumped


def _meta(mapping: DischargeMapping) -> JSON:
    return {"tag": [{"system": mapping.mapping_tag_system, "code": mapping.mapping_tag_code}]}


def _patient(event: AdtEvent, mapping: DischargeMapping) -> JSON:
    patient = event.patient
    resource: JSON = {
        "resourceType": "Patient",
        "meta": _meta(mapping),
        "identifier": [patient_identifier(event, mapping)],
    }
    if patient.family_name or patient.given_name:
        name: JSON = {}
        if patient.family_name:
            name["family"] = patient.family_name
        if patient.given_name:
            name["given"] = [patient.given_name]
        resource["name"] = [name]
    if patient.birth_date:
        resource["birthDate"] = patient.birth_date.isoformat()
    if patient.sex in _GENDER:
        resource["gender"] = _GENDER[patient.sex]
    return _validated(Patient, resource)


def _participant(
    role: str, practitioner: Practitioner | None, mapping: DischargeMapping
) -> list[JSON]:
    if practitioner is None:
        return []
    individual: JSON = {}
    if practitioner.identifier:
        individual["identifier"] = {
            "system": _system(
                mapping.identifier_systems["practitioner"], practitioner.assigning_authority
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


def _condition(
    event: AdtEvent,
    diagnosis: Diagnosis,
    mapping: DischargeMapping,
    patient_url: str,
    encounter_url: str,
) -> JSON:
    system = mapping.coding_systems.get(diagnosis.coding_system.upper())
    code: JSON = {"text": diagnosis.display or diagnosis.code}
    if system:
        coding: JSON = {"system": system, "code": diagnosis.code}
        if diagnosis.display:
            coding["display"] = diagnosis.display
        code["coding"] = [coding]
    else:
        # An unknown coding system is kept as text: never guessed into ICD-10.
        code["text"] = f"{diagnosis.code} {diagnosis.display}".strip()
    resource: JSON = {
        "resourceType": "Condition",
        "meta": _meta(mapping),
        "identifier": [_condition_identifier(event, diagnosis, mapping)],
        "clinicalStatus": {"coding": [{"system": _CONDITION_CLINICAL, "code": "active"}]},
        "category": [{"coding": [{"system": _CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
        "code": code,
        "subject": {"reference": patient_url},
        "encounter": {"reference": encounter_url},
    }
    verification = mapping.verification.get(diagnosis.diagnosis_type)
    if verification:
        resource["verificationStatus"] = {
            "coding": [{"system": mapping.verification_system, "code": verification}]
        }
    recorded = _when(diagnosis.recorded_at, mapping)
    if recorded:
        resource["recordedDate"] = recorded
    return _validated(Condition, resource)


def _encounter(
    event: AdtEvent, mapping: DischargeMapping, patient_url: str, condition_urls: list[str]
) -> JSON:
    discharged = event.trigger is not AdtTrigger.CANCEL_DISCHARGE
    class_code = mapping.class_codes.get(event.patient_class, "IMP")
    resource: JSON = {
        "resourceType": "Encounter",
        "meta": _meta(mapping),
        "identifier": [encounter_identifier(event, mapping)],
        # A13 cancels the discharge: the stay is going on again.
        "status": "finished" if discharged else "in-progress",
        "class": {"system": mapping.class_system, "code": class_code},
        "subject": {"reference": patient_url},
    }
    period: JSON = {}
    start = _when(event.admit_time, mapping)
    if start:
        period["start"] = start
    end = _when(event.discharge_time or event.event_time, mapping) if discharged else None
    if end:
        period["end"] = end
    if period:
        resource["period"] = period
    if discharged and event.discharge_disposition:
        code = mapping.disposition_codes.get(event.discharge_disposition)
        disposition: JSON = (
            {"coding": [{"system": mapping.disposition_system, "code": code}]}
            if code
            else {"text": event.discharge_disposition}
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
        entries: list[JSON] = []
        for rank, (diagnosis, url) in enumerate(
            zip(event.diagnoses, condition_urls, strict=True), start=1
        ):
            entry: JSON = {"condition": {"reference": url}, "rank": rank}
            use = mapping.diagnosis_use.get(diagnosis.diagnosis_type)
            if use:
                entry["use"] = {"coding": [{"system": mapping.diagnosis_use_system, "code": use}]}
            entries.append(entry)
        resource["diagnosis"] = entries
    return _validated(Encounter, resource)


def encounter_transaction_for(event: AdtEvent, mapping: DischargeMapping) -> JSON:
    """The transaction that makes FHIR agree with the event (A03, A13 or A08)."""
    patient_id = patient_identifier(event, mapping)
    encounter_id = encounter_identifier(event, mapping)
    patient_url = _full_url(patient_id)
    encounter_url = _full_url(encounter_id)
    condition_ids = [_condition_identifier(event, d, mapping) for d in event.diagnoses]
    condition_urls = [_full_url(identifier) for identifier in condition_ids]
    entries = [
        _conditional_put("Patient", patient_id, _patient(event, mapping)),
        _conditional_put(
            "Encounter", encounter_id, _encounter(event, mapping, patient_url, condition_urls)
        ),
        *(
            _conditional_put(
                "Condition",
                identifier,
                _condition(event, diagnosis, mapping, patient_url, encounter_url),
            )
            for diagnosis, identifier in zip(event.diagnoses, condition_ids, strict=True)
        ),
    ]
    bundle: JSON = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    Bundle.model_validate(bundle)
    return bundle
