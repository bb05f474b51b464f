"""Imaging order-to-result: its spec, its routing and the PACS poller's start.

Messages: ORM^O01 / OMI^O23 orders and ORU^R01 reports that are imaging (``claims``: OBR-24
names an imaging diagnostic section, or OBR-4 a procedure the mapping marks as imaging);
other ORM/ORU stay lab order-to-result's. Plus the PACS's StableStudy changes, announced
by PacsChangePoller.

Key: one exchange per accession number (OBR-18, else the filler number ORC-3/OBR-3; DICOM
carries it in AccessionNumber): ``imaging-order/<keyed pseudonym>``. The PACS knows no
facility, so the id has none; the facility is a search attribute.

Review: the study's headers name another patient (PatientID, name, birth date) ->
patient-mismatch; a study without an order after a wait -> unknown-order (approve
publishes it, without basedOn, for the one Patient its PatientID and name identify; reject
leaves it unpublished). Ends when the report is published, on a cancel, or when a reviewer
rejects an orphan study.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy

from activities.imaging_order import (
    ImagingActivities,
    PacsFeedActivities,
    interpret_imaging_order,
)
from activities.order_to_result import interpret_lab_result
from adapters.dicom import DicomWebClient, OrthancClient
from adapters.hl7v2.header import DecodedMessage
from adapters.hl7v2.imaging_messages import accession_number_of
from exchanges import order_to_result
from exchanges.sdk import (
    START_SEARCH_ATTRIBUTES,
    ExchangeSpec,
    MessageType,
    Route,
    RoutingContext,
    WorkerDependencies,
    id_part,
    pseudonym,
    signal_name,
    structure_error,
)
from mappings.imaging_order.fhir_imaging import is_imaging_order
from mappings.imaging_order.mapping import load_imaging_mapping
from models.audit import AuditAction
from models.exchanges import ImagingOrderInput, PacsPollerInput
from models.imaging_events import StudyStable
from models.settings import Settings
from workflows import search_attributes as sa
from workflows.imaging_order import ImagingOrder, PacsChangePoller

MAPPING_VERSION = "v1"
POLLER_WORKFLOW_ID = "imaging-order-pacs-changes"
# A study whose AccessionNumber is empty still gets an exchange (which then waits for a
# reviewer): keyed by its Study Instance UID instead.
_NO_ACCESSION = "study-uid:"


@dataclass(frozen=True)
class AccessionKey:
    facility: str
    accession_key: str


def imaging_workflow_id(accession_number: str, pseudonym_key: bytes) -> str:
    return f"imaging-order/{pseudonym(pseudonym_key, 'accession', accession_number)}"


def claims_imaging(message: DecodedMessage) -> bool:
    """OBR-24 or OBR-4 marks it imaging (by the mapping new exchanges start on)."""
    mapping = load_imaging_mapping(MAPPING_VERSION)
    return is_imaging_order(message.field("OBR", 24), message.field("OBR", 4), mapping)


def route_imaging_message(message: DecodedMessage, context: RoutingContext) -> Route[AccessionKey]:
    header = message.header
    is_report = header.message_code == "ORU"
    accession = accession_number_of(message.field)
    if not accession:
        raise structure_error(
            message,
            "OBR",
            18,
            "no accession number (OBR-18) nor filler order number (ORC-3/OBR-3): the "
            "imaging order cannot be matched to its study",
            code="101",
        )
    facility = id_part(
        message.field("ORC", 2, component=2)
        or (header.receiving_facility if is_report else header.sending_facility)
    )
    workflow_id = imaging_workflow_id(accession, context.pseudonym_key)
    return Route(
        exchange=EXCHANGE.name,
        workflow_id=workflow_id,
        signal=ImagingOrder.report_message if is_report else ImagingOrder.order_message,
        facility=facility,
        key=AccessionKey(facility=facility, accession_key=workflow_id.rsplit("/", 1)[-1]),
    )


def start_input(route: Route[AccessionKey], settings: Settings) -> ImagingOrderInput:
    return ImagingOrderInput(
        facility=route.key.facility,
        accession_key=route.key.accession_key,
        mapping_version=EXCHANGE.mapping_version,
        lab_mapping_version=order_to_result.EXCHANGE.mapping_version,
        unknown_order_wait_seconds=settings.imaging_unknown_order_wait_seconds,
    )


def study_announcer(client: Client, settings: Settings) -> Callable[[StudyStable], Any]:
    """Signal-with-start of the study's exchange: the one its order started, or a new one
    that waits for an order."""
    key = settings.resolved_pseudonym_key()

    async def announce(change: StudyStable) -> None:
        accession = change.accession_number or f"{_NO_ACCESSION}{change.study_instance_uid}"
        workflow_id = imaging_workflow_id(accession, key)
        route: Route[AccessionKey] = Route(
            exchange=EXCHANGE.name,
            workflow_id=workflow_id,
            signal=ImagingOrder.study_stable,
            facility="pacs",
            key=AccessionKey(facility="pacs", accession_key=workflow_id.rsplit("/", 1)[-1]),
        )
        await client.start_workflow(
            ImagingOrder.run,
            start_input(route, settings),
            id=workflow_id,
            task_queue=settings.task_queue,
            start_signal=signal_name(ImagingOrder.study_stable),
            start_signal_args=[change],
            search_attributes=None,
            static_summary=EXCHANGE.summary.format(facility="pacs"),
        )

    return announce


async def start_pacs_poller(client: Client, settings: Settings) -> None:
    """Start the one change-feed poller unless it runs (`careweave up`, each
    `careweave worker` of a PACS at orthanc_url, the tests): USE_EXISTING makes every
    caller after the first find the running one, with its feed position."""
    await client.start_workflow(
        PacsChangePoller.run,
        PacsPollerInput(poll_seconds=settings.imaging_poll_seconds),
        id=POLLER_WORKFLOW_ID,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary="Follows the PACS change feed",
    )


def activities(dependencies: WorkerDependencies) -> Sequence[Callable[..., Any]]:
    settings = dependencies.settings
    auth = (settings.orthanc_username, settings.resolved_orthanc_password())
    dicomweb = DicomWebClient(f"{settings.resolved_orthanc_url}/dicom-web", auth=auth)
    orthanc = OrthancClient(settings.resolved_orthanc_url, auth=auth)
    dependencies.on_close.push_async_callback(dicomweb.aclose)
    dependencies.on_close.push_async_callback(orthanc.aclose)
    imaging = ImagingActivities(dependencies.fhir, dicomweb, settings.resolved_worklist_dir)
    feed = PacsFeedActivities(orthanc, study_announcer(dependencies.client, settings))
    return [
        interpret_imaging_order,
        interpret_lab_result,
        imaging.schedule_imaging_order,
        imaging.read_imaging_study,
        imaging.find_study_patient,
        imaging.publish_imaging_study,
        imaging.publish_imaging_report,
        imaging.track_imaging_fulfillment,
        feed.follow_pacs_changes,
    ]


EXCHANGE: ExchangeSpec[AccessionKey] = ExchangeSpec(
    name="imaging-order",
    accepts=(
        MessageType("ORM", ("O01",), ("PID", "ORC", "OBR")),
        MessageType("OMI", ("O23",), ("PID", "ORC", "OBR")),
        MessageType("ORU", ("R01",), ("PID", "OBR", "OBX")),
    ),
    claims=claims_imaging,
    route=route_imaging_message,
    workflow=ImagingOrder,
    signals=(ImagingOrder.order_message, ImagingOrder.report_message, ImagingOrder.study_stable),
    updates=(ImagingOrder.decide_review,),
    start_input=start_input,
    activities=activities,
    audit_actions={
        interpret_imaging_order: AuditAction.TRANSFORM,
        interpret_lab_result: AuditAction.TRANSFORM,
        ImagingActivities.schedule_imaging_order: AuditAction.PUSH,
        ImagingActivities.read_imaging_study: AuditAction.ACCESS,
        ImagingActivities.find_study_patient: AuditAction.ACCESS,
        ImagingActivities.publish_imaging_study: AuditAction.PUSH,
        ImagingActivities.publish_imaging_report: AuditAction.PUSH,
        ImagingActivities.track_imaging_fulfillment: AuditAction.PUSH,
        PacsFeedActivities.follow_pacs_changes: AuditAction.ACCESS,
    },
    summary="Imaging order-to-result for an order of {facility}",
    search_attributes=(*START_SEARCH_ATTRIBUTES, sa.REVIEW_STATE),
    mapping_version=MAPPING_VERSION,
    extra_workflows=(PacsChangePoller,),
)
