"""Discharge sync: its spec and its routing.

One exchange per encounter: the discharge (ADT^A03), its cancel (A13) and updates (A08)
reach ``discharge-sync/<facility>/<encounter pseudonym>``; deliveries go through the
ordered-delivery step, per patient and destination.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from activities.discharge_sync import DischargeActivities, interpret_adt
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
    pseudonym,
    structure_error,
)
from models.audit import AuditAction
from models.discharge import AdtTrigger
from models.exchanges import DischargeSyncInput
from models.settings import Settings
from workflows import search_attributes as sa
from workflows.discharge_sync import DischargeSync


@dataclass(frozen=True)
class EncounterKey:
    """Pseudonyms of the encounter and of the patient (keyed HMAC, no visit number, no MRN)."""

    facility: str
    encounter_key: str
    patient_key: str


def route_adt_message(message: DecodedMessage, context: RoutingContext) -> Route[EncounterKey]:
    """Keyed by the encounter (PV1-19 visit number, else PID-18 account)."""
    header = message.header
    facility = id_part(header.sending_facility)
    patient_key = patient_pseudonym(message, context)
    encounter = message.field("PV1", 19) or message.field("PID", 18)
    if encounter:
        encounter_key = pseudonym(
            context.pseudonym_key, "encounter", header.sending_facility, encounter
        )
    elif header.trigger_event == "A08":
        # An update with no visit or account number belongs to no discharge; it is still
        # committed (and kept in its own exchange's history) rather than refused.
        encounter_key = f"p-{patient_key}"
    else:
        raise structure_error(
            message,
            "PV1",
            19,
            "neither a visit number (PV1-19) nor an account number (PID-18): "
            "the discharge cannot be matched to an encounter",
            "101",
        )
    return Route(
        exchange=EXCHANGE.name,
        workflow_id=f"discharge-sync/{facility}/{encounter_key}",
        signal=DischargeSync.adt_event,
        facility=facility,
        key=EncounterKey(facility=facility, encounter_key=encounter_key, patient_key=patient_key),
    )


def start_input(route: Route[EncounterKey], settings: Settings) -> DischargeSyncInput:
    return DischargeSyncInput(
        facility=route.key.facility,
        encounter_key=route.key.encounter_key,
        patient_key=route.key.patient_key,
        mapping_version=EXCHANGE.mapping_version,
        close_after_seconds=settings.discharge_close_after_seconds,
    )


def activities(dependencies: WorkerDependencies) -> Sequence[Callable[..., Any]]:
    return [interpret_adt, DischargeActivities(dependencies.client).closed_discharge]


EXCHANGE: ExchangeSpec[EncounterKey] = ExchangeSpec(
    name="discharge-sync",
    # The events the ADT parser reads (AdtTrigger): one list for the gateway and the parser.
    accepts=(MessageType("ADT", tuple(event.value for event in AdtTrigger), ("PID", "PV1")),),
    route=route_adt_message,
    workflow=DischargeSync,
    signals=(DischargeSync.adt_event,),
    updates=(DischargeSync.decide_review,),
    start_input=start_input,
    activities=activities,
    audit_actions={
        interpret_adt: AuditAction.TRANSFORM,
        DischargeActivities.closed_discharge: AuditAction.ACCESS,
    },
    summary="Discharge sync for an encounter at {facility}",
    search_attributes=(*START_SEARCH_ATTRIBUTES, sa.REVIEW_STATE),
    # v3: the FHIR delivery creates the Patient if absent instead of writing over it.
    # Running exchanges keep the version they started with (v1, v2 still load).
    mapping_version="v3",
)
