"""Patient-sync: its spec and its routing.

One exchange per patient: every ADT^A28 (add person information) and ^A31 (update person
information) of a patient reaches ``patient-sync/<facility>/<patient key>``, the key a
pseudonym of PID-3 with its assigning authority (the same key discharge sync uses), so
one patient's messages are applied in arrival order.

Required segments: PID only. HL7 makes EVN (and PV1) required in ADT_A05, but the
gateway requires what an exchange cannot do without, and patient-sync reads nothing
from them; refusing a person's demographics for a segment nobody reads would hold
clinical data back for a formality. Discharge sync does the same with EVN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from activities.patient_sync import PatientActivities, interpret_person_message
from adapters.hl7v2.header import DecodedMessage
from exchanges.sdk import (
    START_SEARCH_ATTRIBUTES,
    ExchangeSpec,
    MessageType,
    Route,
    RoutingContext,
    WorkerDependencies,
    id_part,
    patient_pseudonym,
)
from models.audit import AuditAction
from models.exchanges import PatientSyncInput
from models.person import PersonTrigger
from models.settings import Settings
from workflows import search_attributes as sa
from workflows.patient_sync import PatientSync


@dataclass(frozen=True)
class PatientKey:
    """The sending facility and the patient's pseudonym (keyed HMAC, never the MRN)."""

    facility: str
    patient_key: str


def route_person_message(message: DecodedMessage, context: RoutingContext) -> Route[PatientKey]:
    facility = id_part(message.header.sending_facility)
    patient_key = patient_pseudonym(message, context)
    return Route(
        exchange=EXCHANGE.name,
        workflow_id=f"patient-sync/{facility}/{patient_key}",
        signal=PatientSync.person_message,
        facility=facility,
        key=PatientKey(facility=facility, patient_key=patient_key),
    )


def start_input(route: Route[PatientKey], settings: Settings) -> PatientSyncInput:
    return PatientSyncInput(
        facility=route.key.facility,
        patient_key=route.key.patient_key,
        mapping_version=EXCHANGE.mapping_version,
        close_after_seconds=settings.patient_sync_close_after_seconds,
    )


def activities(dependencies: WorkerDependencies) -> Sequence[Callable[..., Any]]:
    return [interpret_person_message, PatientActivities(dependencies.fhir).write_patient]


EXCHANGE: ExchangeSpec[PatientKey] = ExchangeSpec(
    name="patient-sync",
    # The events the person parser reads (PersonTrigger): one list for gateway and parser.
    accepts=(MessageType("ADT", tuple(event.value for event in PersonTrigger), ("PID",)),),
    route=route_person_message,
    workflow=PatientSync,
    signals=(PatientSync.person_message,),
    updates=(PatientSync.decide_review,),
    start_input=start_input,
    activities=activities,
    audit_actions={
        interpret_person_message: AuditAction.TRANSFORM,
        # Its read of the Patient (to merge into it) is part of the write.
        PatientActivities.write_patient: AuditAction.PUSH,
    },
    summary="Patient sync for a patient of {facility}",
    search_attributes=(*START_SEARCH_ATTRIBUTES, sa.REVIEW_STATE),
    mapping_version="v1",
)
