"""Patient-merge: its spec and its routing.

One exchange per surviving patient: every merge (ADT^A40, and the older A18, A34, A35,
A36), link (A24) and unlink (A37) naming that patient in its (first) PID reaches
``patient-merge/<authority>/<patient key>``, the key the same pseudonym of PID-3 with its
assigning authority that patient-sync and discharge sync use, so one patient's identity
changes are applied in arrival order. Account and visit merges (A41, A42) and the other
merge events HL7 defines are answered AR 201 naming the event until they are supported.

Required segments: PID, and MRG for the merges (an A40 without MRG merges nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from activities.merge_announcements import AnnouncementActivities
from activities.merge_notices import OpenExchangeNotices
from activities.patient_merge import MergeActivities, interpret_identity_message
from adapters.database import open_engine
from adapters.hl7v2.header import DecodedMessage
from adapters.hl7v2.merge_messages import NOT_YET_SUPPORTED_EVENTS, check_identity_event
from adapters.patient_index import PatientIndex
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
from models.exchanges import PatientMergeInput
from models.merge import LinkTrigger, MergeTrigger
from models.settings import Settings
from workers.payload_codec import load_payload_keys
from workflows import search_attributes as sa
from workflows.patient_merge import PatientMergeExchange
from workflows.patient_unmerge import PatientUnmerge


@dataclass(frozen=True)
class SurvivorKey:
    """The sending facility and the surviving patient's pseudonym (never the MRN)."""

    facility: str
    patient_key: str


def route_identity_message(message: DecodedMessage, context: RoutingContext) -> Route[SurvivorKey]:
    # Refuses (AR 201, naming the event) the merges HL7 defines that are not supported yet.
    check_identity_event(message.header)
    facility = id_part(message.header.sending_facility)
    authority = id_part(message.field("PID", 3, component=4) or message.header.sending_facility)
    patient_key = patient_pseudonym(message, context)
    return Route(
        exchange=EXCHANGE.name,
        workflow_id=f"patient-merge/{authority}/{patient_key}",
        signal=PatientMergeExchange.identity_message,
        facility=facility,
        key=SurvivorKey(facility=facility, patient_key=patient_key),
    )


def start_input(route: Route[SurvivorKey], settings: Settings) -> PatientMergeInput:
    return PatientMergeInput(
        facility=route.key.facility,
        patient_key=route.key.patient_key,
        mapping_version=EXCHANGE.mapping_version,
        close_after_seconds=settings.patient_merge_close_after_seconds,
    )


def activities(dependencies: WorkerDependencies) -> Sequence[Callable[..., Any]]:
    settings = dependencies.settings
    engines: list[Engine] = []

    def open_index() -> PatientIndex:
        # Opened on the first merge, not at worker start: a worker that never merges needs
        # no database connection or payload key file for it.
        engine = open_engine(settings.resolved_database_url)
        engines.append(engine)
        return PatientIndex(engine, load_payload_keys(settings), settings.resolved_pseudonym_key())

    def close() -> None:
        for engine in engines:
            engine.dispose()

    dependencies.on_close.callback(close)
    merge = MergeActivities(dependencies.fhir, open_index)
    announcements = AnnouncementActivities(settings.resolved_pseudonym_key())
    notices = OpenExchangeNotices(dependencies.client, settings.resolved_pseudonym_key())
    return [
        announcements.survivor_queue_key,
        announcements.retired_queue_key,
        notices.tell_open_exchanges,
        interpret_identity_message,
        merge.assess_merge,
        merge.record_identity_change,
        merge.merge_patient_records,
        merge.repoint_references_page,
        merge.undo_merge_in_fhir,
        merge.undo_identity_change,
    ]


_MERGES = tuple(trigger.value for trigger in MergeTrigger)
_LINKS = tuple(trigger.value for trigger in LinkTrigger)

EXCHANGE: ExchangeSpec[SurvivorKey] = ExchangeSpec(
    name="patient-merge",
    accepts=(
        MessageType("ADT", _MERGES, ("PID", "MRG")),
        MessageType("ADT", _LINKS, ("PID",)),
        # Accepted only to be refused by name in the route (AR 201 "... not supported").
        MessageType("ADT", tuple(NOT_YET_SUPPORTED_EVENTS), ()),
    ),
    route=route_identity_message,
    workflow=PatientMergeExchange,
    signals=(PatientMergeExchange.identity_message,),
    updates=(PatientMergeExchange.decide_review,),
    # `careweave merge undo` starts one per merge it undoes.
    extra_workflows=(PatientUnmerge,),
    start_input=start_input,
    activities=activities,
    audit_actions={
        interpret_identity_message: AuditAction.TRANSFORM,
        MergeActivities.assess_merge: AuditAction.TRANSFORM,
        MergeActivities.record_identity_change: AuditAction.PUSH,
        MergeActivities.merge_patient_records: AuditAction.PUSH,
        MergeActivities.repoint_references_page: AuditAction.PUSH,
        MergeActivities.undo_merge_in_fhir: AuditAction.PUSH,
        MergeActivities.undo_identity_change: AuditAction.PUSH,
        AnnouncementActivities.survivor_queue_key: AuditAction.TRANSFORM,
        AnnouncementActivities.retired_queue_key: AuditAction.TRANSFORM,
        OpenExchangeNotices.tell_open_exchanges: AuditAction.ACCESS,
    },
    summary="Patient merge for a patient of {facility}",
    search_attributes=(*START_SEARCH_ATTRIBUTES, sa.REVIEW_STATE),
    mapping_version="v1",
)
