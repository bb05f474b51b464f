"""What a review page shows beside the decision form, per kind of review.

Everything comes from the review's context, which the workflow filled with data it
already held (models/review.py); the API's Temporal client has decoded it, and only
signed-in pages call this. Reviews asked before contexts existed get no view: the page
shows them the generic way (summary and details).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

from temporalio.service import RPCError

from adapters.hl7v2.ack import AckExplanation, AckParseError, explain_ack
from adapters.hl7v2.lab_messages import LabMessageInvalid, parse_lab_results
from exchanges.sdk import id_part, search_pseudonym
from mappings.order_to_result.concept_map import (
    LoincCandidate,
    load_lab_mapping,
    loinc_candidates,
)
from models.lab import LabOrder, LabResult
from models.review import (
    DeliveryFailureContext,
    MergeReviewContext,
    PatientMismatchContext,
    ReviewRequest,
    UnknownOrderContext,
    UnmappedCodeContext,
    UnmappedObservation,
    UnorderedStudyContext,
)
from models.search import BusinessKeyKind
from workers.api.context import ApiContext
from workers.api.reviews import TEMPORAL_RPC_TIMEOUT
from workflows import search_attributes as sa

# LOINC candidates shown per unmapped code, and open orders shown for a result.
CANDIDATES_SHOWN = 5
OPEN_ORDERS_SHOWN = 20


@dataclass(frozen=True)
class UnmappedLine:
    observation: UnmappedObservation
    candidates: list[LoincCandidate]


@dataclass(frozen=True)
class UnmappedCodeView:
    kind = "unmapped-code"
    mapping_version: str
    lines: list[UnmappedLine]


@dataclass(frozen=True)
class OpenOrder:
    ref: str
    status: str
    started_at: datetime | None
    order: LabOrder | None
    same_patient: bool


@dataclass(frozen=True)
class UnknownOrderView:
    kind = "unknown-order"
    facility: str
    results: list[LabResult]
    unreadable: list[str]
    open_orders: list[OpenOrder]


@dataclass(frozen=True)
class DeliveryFailureView:
    kind = "delivery-failed"
    failure: DeliveryFailureContext
    ack: AckExplanation | None
    ack_unreadable: str
    editable: bool


@dataclass(frozen=True)
class PatientMismatchView:
    kind = "patient-mismatch"
    context: PatientMismatchContext


@dataclass(frozen=True)
class UnorderedStudyView:
    kind = "unordered-study"
    context: UnorderedStudyContext


@dataclass(frozen=True)
class MergeReviewView:
    kind = "uncertain-merge"
    context: MergeReviewContext


KindView = (
    UnmappedCodeView
    | UnknownOrderView
    | DeliveryFailureView
    | PatientMismatchView
    | UnorderedStudyView
    | MergeReviewView
)


async def kind_view(
    context: ApiContext, workflow_id: str, review: ReviewRequest
) -> KindView | None:
    found = review.context
    if isinstance(found, UnmappedCodeContext):
        return unmapped_code_view(found)
    if isinstance(found, UnknownOrderContext):
        return await unknown_order_view(context, workflow_id, found)
    if isinstance(found, DeliveryFailureContext):
        return delivery_failure_view(found, editable="edit" in review.actions)
    if isinstance(found, PatientMismatchContext):
        return PatientMismatchView(found)
    if isinstance(found, MergeReviewContext):
        return MergeReviewView(found)
    if isinstance(found, UnorderedStudyContext):
        return UnorderedStudyView(found)
    return None


def unmapped_code_view(found: UnmappedCodeContext) -> UnmappedCodeView:
    mapping = load_lab_mapping(found.mapping_version)
    return UnmappedCodeView(
        mapping_version=found.mapping_version,
        lines=[
            UnmappedLine(line, loinc_candidates(line.text, mapping, CANDIDATES_SHOWN))
            for line in found.observations
        ],
    )


def delivery_failure_view(found: DeliveryFailureContext, *, editable: bool) -> DeliveryFailureView:
    ack, unreadable = None, ""
    if found.raw_answer:
        try:
            ack = explain_ack(found.raw_answer)
        except AckParseError as err:
            unreadable = str(err)
    return DeliveryFailureView(found, ack, unreadable, editable)


async def unknown_order_view(
    context: ApiContext, workflow_id: str, found: UnknownOrderContext
) -> UnknownOrderView:
    results: list[LabResult] = []
    unreadable: list[str] = []
    for text in found.held_messages:
        try:
            results.extend(parse_lab_results(text))
        except LabMessageInvalid as err:
            unreadable.append(str(err))
    patients = {result.patient.identifier for result in results}
    orders = await open_orders(context, workflow_id, found.facility, patients)
    return UnknownOrderView(found.facility, results, unreadable, orders)


async def open_orders(
    context: ApiContext, workflow_id: str, facility: str, patients: set[str]
) -> list[OpenOrder]:
    """Running order-to-result exchanges of the same facility (the order the result may
    belong to under another number); those of the result's patient first. The patient is
    matched in visibility by PatientKey (the keyed pseudonym of the MRN, never the MRN),
    and for exchanges started before PatientKey existed, by the order's PID-3."""
    client = context.temporal_client
    base = (
        f"{sa.EXCHANGE.name} = 'order-to-result' AND {sa.FACILITY.name} = '{id_part(facility)}' "
        "AND ExecutionStatus = 'Running'"
    )
    key = context.settings.resolved_pseudonym_key()
    patient_keys = [search_pseudonym(key, BusinessKeyKind.MRN, mrn) for mrn in sorted(patients)]
    same_patient: set[str] = set()
    found: dict[str, datetime | None] = {}
    queries = []
    if patient_keys:
        either = " OR ".join(f"{sa.PATIENT_KEY.name} = '{k}'" for k in patient_keys)
        queries.append((f"{base} AND ({either})", True))
    queries.append((base, False))
    for query, of_patient in queries:
        async for execution in client.list_workflows(query, limit=OPEN_ORDERS_SHOWN + 1):
            if execution.id == workflow_id or len(found) >= OPEN_ORDERS_SHOWN:
                continue
            found.setdefault(execution.id, execution.start_time)
            if of_patient:
                same_patient.add(execution.id)

    async def described(workflow_id: str, started_at: datetime | None) -> OpenOrder:
        handle = client.get_workflow_handle(workflow_id)
        order: LabOrder | None = None
        status = "unknown"
        # An exchange that finished meanwhile, or one on an older worker, shows less.
        with contextlib.suppress(RPCError):
            status = await handle.query("status", rpc_timeout=TEMPORAL_RPC_TIMEOUT)
            raw = await handle.query("order", rpc_timeout=TEMPORAL_RPC_TIMEOUT)
            order = LabOrder.model_validate(raw) if raw else None
        same = workflow_id in same_patient or (
            order is not None and order.patient.identifier in patients
        )
        return OpenOrder(context.refs.ref(workflow_id), str(status), started_at, order, same)

    listed = await asyncio.gather(*(described(wid, at) for wid, at in found.items()))
    never = datetime.max.replace(tzinfo=UTC)
    return sorted(listed, key=lambda o: (not o.same_patient, o.started_at or never))
