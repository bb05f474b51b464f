"""Pure builders: canonical lab events -> FHIR R4 JSON, validated with ``fhir.resources.R4B``.

Every write is conditional on a business identifier derived from the order
numbers (never from names or MRNs), so an activity retried after a crash, a
resent message or a corrected result updates the same resources (a new
version) instead of creating duplicates. ``fullUrl`` uuids are uuid5 of those
identifiers: building the same input twice gives the same JSON.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.specimen import Specimen
from fhir.resources.R4B.task import Task
from pydantic import BaseModel

from mappings.fhir_identifiers import (
    conditional_url,
    patient_identifier,
    patient_query,
    qualified_system,
    quoted_code,
)
from mappings.fhir_validation import validate_resource
from mappings.order_to_result.concept_map import PATIENT_CREATE_IF_ABSENT, LabMapping
from mappings.patient_sync.fhir_patient import new_patient, patient_changes
from mappings.patient_sync.mapping import load_patient_mapping
from models.demographics import PersonDemographics, PersonIdentifier, PersonName
from models.lab import (
    CodedConcept,
    LabObservation,
    LabOrder,
    LabResult,
    LabSpecimen,
    OrderingProvider,
    PatientRef,
)

__all__ = [
    "CriticalFinding",
    "OrderKey",
    "critical_findings",
    "escalation_task_for",
    "is_critical",
    "order_identifiers",
    "order_transaction_for",
    "patient_entry",
    "report_identifier",
    "report_key",
    "result_transaction_for",
    "review_task_identifier",
    "service_request_for",
]

JSON = dict[str, Any]
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_UCUM = "http://unitsofmeasure.org"
_UUID_NAMESPACE = uuid.UUID("6f1c7f0e-3b0a-5c1e-9a57-2f4c0a6b5d11")


# --- identifiers -------------------------------------------------------------------


OrderKey = tuple[str | None, str, str | None, str]
"""(placer number, placer namespace, filler number, filler namespace), as on LabOrder/LabResult."""


def _key(item: LabOrder | LabResult) -> OrderKey:
    return (
        item.placer_order_number,
        item.placer_namespace,
        item.filler_order_number,
        item.filler_namespace,
    )


def order_identifiers(key: OrderKey, mapping: LabMapping) -> list[JSON]:
    """ServiceRequest.identifier for an order: placer (type PLAC) and filler (type FILL)."""
    placer, placer_ns, filler, filler_ns = key
    identifiers: list[JSON] = []
    if placer:
        identifiers.append(
            {
                "type": {"coding": [{"system": _V2_0203, "code": "PLAC"}]},
                "system": qualified_system(mapping.identifier_system("placer_order"), placer_ns),
                "value": placer,
            }
        )
    if filler:
        identifiers.append(
            {
                "type": {"coding": [{"system": _V2_0203, "code": "FILL"}]},
                "system": qualified_system(mapping.identifier_system("filler_order"), filler_ns),
                "value": filler,
            }
        )
    if not identifiers:
        raise ValueError("an order needs a placer or a filler order number")
    return identifiers


def _report_value(key: OrderKey) -> str:
    # The filler (the lab) issues the report, so its number identifies it;
    # a placer-only result falls back to the placer number.
    placer, placer_ns, filler, filler_ns = key
    if filler:
        return f"filler/{quote(filler_ns, safe='')}/{quote(filler, safe='')}"
    if placer:
        return f"placer/{quote(placer_ns, safe='')}/{quote(placer, safe='')}"
    raise ValueError("a result needs a placer or a filler order number")


def report_key(result: LabResult, mapping: LabMapping) -> str:
    """The value of DiagnosticReport.identifier: the order number, and from mapping v2 the
    OBR-4 code (two OBR groups of one order are two reports). Carries order numbers."""
    value = _report_value(_key(result))
    if mapping.report_per_service:
        service = result.universal_service_id
        value += f"/{quote(service.system or 'L', safe='')}:{quote(service.code, safe='')}"
    return value


def report_identifier(result: LabResult, mapping: LabMapping) -> JSON:
    """DiagnosticReport.identifier: stable across preliminary, final and corrected reports."""
    return {"system": mapping.identifier_system("lab_report"), "value": report_key(result, mapping)}


def _observation_identifiers(result: LabResult, mapping: LabMapping) -> list[JSON]:
    # Keyed by the code as sent (not by OBX-1, which feeds often leave blank
    # or repeat, nor by the LOINC of one mapping version); the n-th repeat of
    # the same code gets its occurrence number.
    report = report_key(result, mapping)
    seen: dict[str, int] = {}
    identifiers: list[JSON] = []
    for obs in result.observations:
        code_key = f"{quoted_code(obs.code.system or 'L')}:{quoted_code(obs.code.code)}"
        seen[code_key] = seen.get(code_key, 0) + 1
        identifiers.append(
            {
                "system": mapping.identifier_system("lab_observation"),
                "value": f"{report}/{code_key}/{seen[code_key]}",
            }
        )
    return identifiers


def _full_url(identifier: Mapping[str, Any]) -> str:
    return _uuid_url(identifier["system"], identifier["value"])


@lru_cache(maxsize=1024)
def _uuid_url(system: str, value: str) -> str:
    # Each entry's url is asked for twice (its fullUrl and the reference to it): a uuid5
    # (SHA-1) per ask was a tenth of the mapping's cost.
    return "urn:uuid:" + str(uuid.uuid5(_UUID_NAMESPACE, f"{system}|{value}"))


def _patient_reference(patient: PatientRef, mapping: LabMapping) -> JSON:
    """Subject of every resource built from ``patient``'s order or result.

    v2 on: the fullUrl of the entry ``patient_entry`` adds to the same transaction, which
    the server turns into the literal Patient/<id> it found or created. v1: a logical
    reference by identifier (no Patient is written)."""
    identifier = patient_identifier(patient, mapping.identifier_system("patient"))
    if mapping.patient_write == PATIENT_CREATE_IF_ABSENT:
        return {"reference": _full_url(identifier), "type": "Patient"}
    return {"identifier": identifier}


def patient_entry(
    patient: PatientRef, person: PersonDemographics | None, mapping: LabMapping
) -> JSON | None:
    """The transaction entry that makes sure ``patient``'s Patient exists (v2 on): a
    conditional create from the whole PID, so a Patient other sources wrote (registration,
    patient-sync) is referenced and never overwritten. Without the PID's demographics
    (a run recorded before they were read) the Patient is created from the key identifier
    and what PatientRef holds. None in v1."""
    if mapping.patient_write != PATIENT_CREATE_IF_ABSENT:
        return None
    identifier = patient_identifier(patient, mapping.identifier_system("patient"))
    person = person or _person_of(patient)
    changes = patient_changes(person, load_patient_mapping(mapping.patient_mapping_version))
    return {
        "fullUrl": _full_url(identifier),
        "resource": new_patient(changes),
        "request": {
            "method": "POST",
            "url": "Patient",
            "ifNoneExist": patient_query(identifier),
        },
    }


def _person_of(patient: PatientRef) -> PersonDemographics:
    return PersonDemographics(
        patient=patient,
        identifiers=(
            PersonIdentifier(
                value=patient.identifier,
                assigning_authority=patient.assigning_authority,
                identifier_type=patient.identifier_type,
            ),
        ),
        names=(
            (PersonName(family=patient.family_name, given=(patient.given_name,)),)
            if patient.family_name or patient.given_name
            else ()
        ),
        birth_date=patient.birth_date.isoformat() if patient.birth_date else "",
        sex=patient.sex,
    )


def _practitioner_reference(provider: OrderingProvider, mapping: LabMapping) -> JSON:
    """By identifier when the XCN has an id; a requester known by name only is named by
    display (there is no identifier to find a Practitioner by)."""
    display = " ".join(p for p in (provider.given_name, provider.family_name) if p)
    if not provider.id:
        return {"type": "Practitioner", "display": display}
    reference: JSON = {
        "type": "Practitioner",
        "identifier": {
            "system": qualified_system(
                mapping.identifier_system("practitioner"), provider.assigning_authority
            ),
            "value": provider.id,
        },
    }
    if display:
        reference["display"] = display
    return reference


def _meta(mapping: LabMapping) -> JSON:
    return {"tag": [{"system": mapping.mapping_tag_system, "code": mapping.mapping_tag_code}]}


# --- small value mappings ------------------------------------------------------------


def _datetime(value: datetime | None, mapping: LabMapping) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        return value.isoformat()
    if mapping.naive_timestamp_offset:
        return value.isoformat() + mapping.naive_timestamp_offset
    # FHIR requires an offset on a time; the sender gave none (see [time] in the TOML).
    return value.date().isoformat()


def _codeable(concept: CodedConcept, mapping: LabMapping, *, with_loinc: bool = True) -> JSON:
    codings: list[JSON] = []
    loinc = mapping.loinc_for(concept) if with_loinc else None
    if loinc is not None:
        coding: JSON = {"system": mapping.system_uri("LN"), "code": loinc.code}
        if loinc.display:
            coding["display"] = loinc.display
        codings.append(coding)
    for code, text, system in (
        (concept.code, concept.text, concept.system),
        (concept.alternate_code, concept.alternate_text, concept.alternate_system),
    ):
        # FHIR's code type allows single inner spaces only; a sender's "0  0" is the same
        # code to any reader, and the unnormalised one would fail the whole bundle.
        code = " ".join(code.split())
        if not code:
            continue
        coding = {"system": mapping.system_uri(system), "code": code}
        if text:
            coding["display"] = text
        if coding["system"] == mapping.system_uri("LN") and loinc and code == loinc.code:
            continue
        codings.append(coding)
    codeable: JSON = {"coding": codings}
    if concept.text:
        codeable["text"] = concept.text
    return codeable


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def _quantity(value: float, unit: str, mapping: LabMapping) -> JSON:
    quantity: JSON = {"value": _number(value)}
    if unit:
        code = mapping.ucum(unit)
        quantity["unit"] = unit
        if code is not None:
            quantity.update(system=_UCUM, code=code)
    return quantity


def _interpretation(flags: tuple[str, ...], mapping: LabMapping) -> list[JSON]:
    concepts: list[JSON] = []
    for flag in flags:
        if flag in mapping.interpretation_codes:
            coding: JSON = {"system": mapping.interpretation_system, "code": flag}
            if flag in mapping.interpretation_display:
                coding["display"] = mapping.interpretation_display[flag]
            concepts.append({"coding": [coding], "text": flag})
        else:
            concepts.append({"text": flag})
    return concepts


def _report_status(result: LabResult, mapping: LabMapping) -> str:
    if result.result_status:
        return mapping.report_status.get(result.result_status, mapping.report_status["default"])
    # OBR-25 left empty (seen in real feeds): the OBX-11 statuses decide.
    statuses = {
        mapping.observation_status.get(o.result_status, "unknown") for o in result.observations
    }
    if "corrected" in statuses:
        return "corrected"
    if statuses == {"final"}:
        return "final"
    return "partial" if "final" in statuses else mapping.report_status["default"]


def _validated(model: type[BaseModel], resource: JSON) -> JSON:
    # Checked against the model's own definition, compiled once (mappings/fhir_validation):
    # a Bundle's check covers only its own elements, its entries' resources were checked
    # as they were built. No dump and re-read: the JSON is returned as it was validated.
    if resource.get("resourceType") != model.__name__:
        raise ValueError(f"expected a {model.__name__}, got {resource.get('resourceType')}")
    return validate_resource(resource)


# --- critical results -------------------------------------------------------------------


@dataclass(frozen=True)
class CriticalFinding:
    """One observation that makes a result critical, as the provider's Task names it."""

    code: str  # "system|code" as sent: stable across versions of the report
    label: str  # the test's text, else its code
    value: str  # comparator, number and unit, or the text/coded answer
    why: str  # the OBX-8 flag, or "critical range" when the mapping's limits decided

    def describe(self) -> str:
        return f"{self.label} {self.value} ({self.why})"


def _observation_value(obs: LabObservation) -> str:
    if obs.numeric_value is not None:
        text = f"{obs.comparator or ''}{obs.numeric_value:g}"
        return f"{text} {obs.units}" if obs.units else text
    if obs.coded_value is not None:
        return obs.coded_value.text or obs.coded_value.code
    return obs.string_value or ""


def _outside_critical_range(obs: LabObservation, mapping: LabMapping) -> bool:
    if obs.numeric_value is None or not mapping.critical_ranges:
        return False
    loinc = mapping.loinc_for(obs.code)
    limits = mapping.critical_ranges.get(loinc.code) if loinc else None
    if limits is None or mapping.ucum(obs.units) != limits.unit:
        return False
    value, comparator = obs.numeric_value, obs.comparator or ""
    # "<2.0" is below a low limit of 2.5 whatever the true value; "<3.0" may not be.
    low_certain = comparator in ("", "<", "<=")
    high_certain = comparator in ("", ">", ">=")
    if limits.low is not None and low_certain:
        if value < limits.low or (comparator == "<" and value <= limits.low):
            return True
    if limits.high is not None and high_certain:
        if value > limits.high or (comparator == ">" and value >= limits.high):
            return True
    return False


def critical_findings(result: LabResult, mapping: LabMapping) -> tuple[CriticalFinding, ...]:
    """The observations that make ``result`` critical: any OBX-8 repetition the mapping
    calls critical (HH, LL, AA; case as sent does not matter), or a value outside the
    critical range the mapping declares for its LOINC code (from v2)."""
    findings: list[CriticalFinding] = []
    for obs in result.observations:
        flag = next((f for f in obs.abnormal_flags if f.upper() in mapping.critical_flags), None)
        if flag is None and not _outside_critical_range(obs, mapping):
            continue
        findings.append(
            CriticalFinding(
                code=f"{obs.code.system or 'L'}|{obs.code.code}",
                label=obs.code.text or obs.code.code,
                value=_observation_value(obs),
                why=flag.upper() if flag else "critical range",
            )
        )
    return tuple(findings)


def is_critical(result: LabResult, mapping: LabMapping) -> bool:
    """Whether any observation of ``result`` is critical (see critical_findings)."""
    return bool(critical_findings(result, mapping))


def _critical_correction(
    result: LabResult, before: tuple[CriticalFinding, ...], mapping: LabMapping
) -> str:
    """ "critical value corrected: K 6.9 mmol/L (HH) -> 4.1 mmol/L", or "" when the
    report published before was not critical or its critical values did not change."""
    if not before:
        return ""
    now = {
        f"{obs.code.system or 'L'}|{obs.code.code}": _observation_value(obs)
        for obs in result.observations
    }
    changes = [
        f"{finding.describe()} -> {now.get(finding.code, 'not reported')}"
        for finding in before
        if now.get(finding.code) != finding.value
    ]
    return "critical value corrected: " + "; ".join(changes) if changes else ""


# --- ServiceRequest ----------------------------------------------------------------------


def order_transaction_for(order: LabOrder, mapping: LabMapping) -> JSON:
    """v2 on: the ServiceRequest's conditional PUT after the entry that makes sure its
    Patient exists, in one transaction (the subject is the Patient's literal reference)."""
    request = service_request_for(order, mapping)
    entries = [
        _put("ServiceRequest", _without_type(request["identifier"][0]), request),
    ]
    if (patient := patient_entry(order.patient, order.person, mapping)) is not None:
        entries.insert(0, patient)
    bundle: JSON = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return _validated(Bundle, bundle)


def service_request_for(order: LabOrder, mapping: LabMapping) -> JSON:
    """R4 ServiceRequest for an ORM/OML order; ORC-1 CA/OC gives status revoked."""
    resource: JSON = {
        "resourceType": "ServiceRequest",
        "meta": _meta(mapping),
        "identifier": order_identifiers(_key(order), mapping),
        "status": "revoked" if order.is_cancel else "active",
        "intent": "order",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://snomed.info/sct",
                        "code": "108252007",
                        "display": "Laboratory procedure",
                    }
                ]
            }
        ],
        "priority": mapping.priority[order.priority],
        "code": _codeable(order.requested_test, mapping),
        "subject": _patient_reference(order.patient, mapping),
    }
    authored = _datetime(order.ordered_at, mapping)
    if authored:
        resource["authoredOn"] = authored
    if order.ordering_provider is not None:
        resource["requester"] = _practitioner_reference(order.ordering_provider, mapping)
    return _validated(ServiceRequest, resource)


# --- result transaction ---------------------------------------------------------------


def _based_on(result: LabResult, mapping: LabMapping) -> list[JSON]:
    # Logical reference by the order's identifier: the ServiceRequest was written on
    # order, and a result may arrive for an order we never saw.
    identifier = _without_type(order_identifiers(_key(result), mapping)[0])
    return [{"type": "ServiceRequest", "identifier": identifier}]


def _organization(name: str) -> JSON:
    """The performing lab by name (MSH-4 / OBX-23): Careweave keeps no Organization
    directory to resolve it against."""
    return {"type": "Organization", "display": name}


def _specimen(
    result: LabResult, specimen: LabSpecimen, identifier: JSON, mapping: LabMapping
) -> JSON:
    resource: JSON = {
        "resourceType": "Specimen",
        "meta": _meta(mapping),
        "identifier": [identifier],
        "subject": _patient_reference(result.patient, mapping),
    }
    if specimen.type is not None:
        resource["type"] = _codeable(specimen.type, mapping, with_loinc=False)
    received = _datetime(specimen.received_at, mapping)
    if received:
        resource["receivedTime"] = received
    collection: JSON = {}
    collected = _datetime(specimen.collected_at, mapping)
    if collected:
        collection["collectedDateTime"] = collected
    if specimen.body_site is not None:
        collection["bodySite"] = _codeable(specimen.body_site, mapping, with_loinc=False)
    if specimen.collector:
        collection["collector"] = {"display": specimen.collector}
    if collection:
        resource["collection"] = collection
    return _validated(Specimen, resource)


@dataclass(frozen=True)
class _ReportContext:
    """What every Observation of one report refers to alike, built once per report."""

    subject: JSON
    based_on: list[JSON]
    specimen: JSON | None


def _observation(
    obs: LabObservation,
    identifier: JSON,
    result: LabResult,
    mapping: LabMapping,
    shared: _ReportContext,
) -> JSON:
    resource: JSON = {
        "resourceType": "Observation",
        "meta": _meta(mapping),
        "identifier": [identifier],
        "status": mapping.observation_status.get(
            obs.result_status, mapping.observation_status["default"]
        ),
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": _codeable(obs.code, mapping),
        "subject": shared.subject,
        "basedOn": shared.based_on,
    }
    if shared.specimen is not None:
        resource["specimen"] = shared.specimen
    performer = obs.performing_organization or result.sending_facility
    if performer:
        resource["performer"] = [_organization(performer)]
    effective = _datetime(obs.observed_at or result.observed_at, mapping)
    if effective:
        resource["effectiveDateTime"] = effective
    if obs.value_kind == "quantity" and obs.numeric_value is not None:
        quantity = _quantity(obs.numeric_value, obs.units, mapping)
        if obs.comparator:
            quantity["comparator"] = obs.comparator
        resource["valueQuantity"] = quantity
    elif obs.value_kind == "coded" and obs.coded_value is not None:
        resource["valueCodeableConcept"] = _codeable(obs.coded_value, mapping, with_loinc=False)
    elif obs.value_kind == "string" and obs.string_value:
        # Includes text sent in an NM field (non_numeric_in_nm): published as
        # text only, never coerced into a number.
        resource["valueString"] = obs.string_value
    else:
        resource["dataAbsentReason"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                    "code": "unknown",
                }
            ]
        }
    reference_range: JSON = {}
    if obs.reference_range_low is not None:
        reference_range["low"] = _quantity(obs.reference_range_low, obs.units, mapping)
    if obs.reference_range_high is not None:
        reference_range["high"] = _quantity(obs.reference_range_high, obs.units, mapping)
    if obs.reference_range_text:
        reference_range["text"] = obs.reference_range_text
    if reference_range:
        resource["referenceRange"] = [reference_range]
    if obs.abnormal_flags:
        resource["interpretation"] = _interpretation(obs.abnormal_flags, mapping)
    notes = [{"text": note} for note in obs.notes]
    if obs.non_numeric_in_nm:
        notes.append({"text": "Non-numeric value received in a numeric (NM/SN) field"})
    if notes:
        resource["note"] = notes
    return _validated(Observation, resource)


def _put(resource_type: str, identifier: JSON, resource: JSON) -> JSON:
    return {
        "fullUrl": _full_url(identifier),
        "resource": resource,
        "request": {"method": "PUT", "url": conditional_url(resource_type, identifier)},
    }


_REPORT_NOTE_EXTENSION = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
)


def result_transaction_for(
    result: LabResult,
    mapping: LabMapping,
    *,
    critical: bool | None = None,
    previous: LabResult | None = None,
    stat_before: bool = False,
) -> JSON:
    """One transaction Bundle: DiagnosticReport + Observations + the review Task.

    ``critical`` overrides the flag-based decision (e.g. a reviewer marked it);
    None means ``is_critical(result, mapping)``. ``previous`` is the version of this
    report published before (the last critical one, if any was): when it was critical,
    the Task stays stat whatever the new values are, and says what was corrected --
    the provider may already have acted on the critical value. ``stat_before``: the
    review Task on the server is stat though ``previous`` is unknown (a correction
    that reached a later run of the exchange): it stays stat too.
    """
    critical = is_critical(result, mapping) if critical is None else critical
    before = critical_findings(previous, mapping) if previous is not None else ()
    corrected_critical = _critical_correction(result, before, mapping)
    if stat_before and not before:
        corrected_critical = "critical value corrected: see the earlier versions of this Task"
    stat = critical or bool(before) or stat_before
    report_id = report_identifier(result, mapping)
    report_url = _full_url(report_id)
    entries: list[JSON] = []
    specimen_ref: JSON | None = None
    if result.specimen is not None:
        specimen_id = {
            "system": mapping.identifier_system("lab_specimen"),
            "value": report_id["value"],
        }
        specimen = _specimen(result, result.specimen, specimen_id, mapping)
        entries.append(_put("Specimen", specimen_id, specimen))
        specimen_ref = {"reference": _full_url(specimen_id)}
    observation_refs: list[JSON] = []
    shared = _ReportContext(
        subject=_patient_reference(result.patient, mapping),
        based_on=_based_on(result, mapping),
        specimen=specimen_ref,
    )
    for obs, obs_id in zip(
        result.observations, _observation_identifiers(result, mapping), strict=True
    ):
        observation = _observation(obs, obs_id, result, mapping, shared)
        entries.append(_put("Observation", obs_id, observation))
        observation_refs.append({"reference": _full_url(obs_id)})

    report: JSON = {
        "resourceType": "DiagnosticReport",
        "meta": _meta(mapping),
        "identifier": [report_id],
        "basedOn": shared.based_on,
        "status": _report_status(result, mapping),
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
        "code": _codeable(result.universal_service_id, mapping),
        "subject": shared.subject,
        "result": observation_refs,
    }
    if specimen_ref is not None:
        report["specimen"] = [specimen_ref]
    if result.sending_facility:
        report["performer"] = [_organization(result.sending_facility)]
    if result.results_interpreter:
        report["resultsInterpreter"] = [
            {"type": "Practitioner", "display": result.results_interpreter}
        ]
    if result.notes:
        # R4's DiagnosticReport has no note (R5 added one): the cross-version extension.
        report["extension"] = [
            {"url": _REPORT_NOTE_EXTENSION, "valueAnnotation": {"text": note}}
            for note in result.notes
        ]
    effective = _datetime(result.observed_at, mapping)
    if effective:
        report["effectiveDateTime"] = effective
    issued = _datetime(result.reported_at, mapping)
    if issued and "T" in issued:  # issued is an instant: a time with offset, or nothing
        report["issued"] = issued
    entries.insert(0, _put("DiagnosticReport", report_id, _validated(DiagnosticReport, report)))

    task_id = review_task_identifier(result, mapping)
    task: JSON = {
        "resourceType": "Task",
        "meta": _meta(mapping),
        "identifier": [task_id],
        # A corrected report reopens review: the conditional PUT makes a new
        # version of the same Task (the server keeps the earlier ones), back to
        # requested; once critical, it stays stat.
        "status": "requested",
        "intent": "order",
        "priority": mapping.task_texts["critical_priority" if stat else "normal_priority"],
        "code": {"text": "Review lab result"},
        "description": mapping.task_texts["review_description"]
        + (" (corrected)" if result.is_correction else "")
        + (f" - {corrected_critical}" if corrected_critical else "")
        + (" - critical" if critical else ""),
        "focus": {"reference": report_url, "type": "DiagnosticReport"},
        "for": _patient_reference(result.patient, mapping),
    }
    if result.ordering_provider is not None and result.ordering_provider.id:
        # Only an id names a work queue to own the Task.
        task["owner"] = _practitioner_reference(result.ordering_provider, mapping)
    entries.append(_put("Task", task_id, _validated(Task, task)))
    if (patient := patient_entry(result.patient, result.person, mapping)) is not None:
        entries.insert(0, patient)

    bundle: JSON = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return _validated(Bundle, bundle)


def review_task_identifier(result: LabResult, mapping: LabMapping) -> JSON:
    """Task.identifier of the provider's review Task of ``result``'s report."""
    return {
        "system": mapping.identifier_system("result_review_task"),
        "value": report_key(result, mapping),
    }


def _without_type(identifier: JSON) -> JSON:
    return {"system": identifier["system"], "value": identifier["value"]}


# --- SLA escalation ---------------------------------------------------------------------


def escalation_task_for(order: LabOrder, mapping: LabMapping, *, reason: str | None = None) -> JSON:
    """Transaction Bundle with one conditional PUT of a stat Task: no final result within the SLA.

    Keyed by the order, so a workflow retry or a second SLA timer writes the
    same Task. ``reason`` must not carry PHI (it is stored as Task.description);
    default from the mapping: "No final result within SLA".
    """
    identifiers = order_identifiers(_key(order), mapping)
    primary = _without_type(identifiers[0])
    task_id = {
        "system": mapping.identifier_system("sla_escalation_task"),
        "value": f"{primary['system']}|{primary['value']}",
    }
    task: JSON = {
        "resourceType": "Task",
        "meta": _meta(mapping),
        "identifier": [task_id],
        "status": "requested",
        "intent": "order",
        "priority": mapping.task_texts["critical_priority"],
        "code": {"text": "Lab result overdue"},
        "description": reason or mapping.task_texts["escalation_description"],
        "focus": {"type": "ServiceRequest", "identifier": primary},
        "for": _patient_reference(order.patient, mapping),
    }
    if order.ordering_provider is not None and order.ordering_provider.id:
        task["owner"] = _practitioner_reference(order.ordering_provider, mapping)
    entries = [_put("Task", task_id, _validated(Task, task))]
    if (patient := patient_entry(order.patient, order.person, mapping)) is not None:
        entries.insert(0, patient)
    bundle: JSON = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return _validated(Bundle, bundle)
