"""Find exchanges by a business key a person types, and show one exchange's timeline.

The typed value (an MRN, a visit or order number, an accession, an MSH-10) is turned into
its keyed pseudonym here (``exchanges.sdk.search_pseudonym``) and only the pseudonym goes
to Temporal: visibility holds pseudonyms only (PatientKey, OrderKey, MessageKey). The value
travels in a POST body, never in a URL (URLs end up in access logs and browser history),
and is never logged or audited: the audit row says which kind of key was searched and how
many exchanges were found.

``find_exchanges`` and ``exchange_timeline`` are the functions the HTML pages build on;
their models are in models/search.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowExecution
from temporalio.common import SearchAttributeKey
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from adapters.audit_log import AuditLog
from adapters.database import open_engine
from exchanges.sdk import id_part, search_pseudonym
from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from models.messages import InboundMessage
from models.review import ReviewDecision
from models.search import (
    BusinessKeyKind,
    ExchangeHit,
    ExchangeTimeline,
    TimelineEntry,
    TimelineKind,
)
from workers.api.auth import authorized
from workers.api.common import ApiRefusal, audit_entry
from workers.api.context import ApiContext, Context
from workflows import search_attributes as sa

router = APIRouter()

Viewer = Annotated[
    Identity, Depends(authorized(Role.REVIEWER, Role.OPS, action=AuditAction.ACCESS))
]

# One search answers at most this many exchanges (newest first, as visibility lists them).
MAX_HITS = 200
_RPC_TIMEOUT = timedelta(seconds=30)
_ATTRIBUTE_OF: dict[BusinessKeyKind, SearchAttributeKey[Sequence[str]]] = {
    BusinessKeyKind.MRN: sa.PATIENT_KEY,
    BusinessKeyKind.VISIT: sa.ORDER_KEY,
    BusinessKeyKind.PLACER: sa.ORDER_KEY,
    BusinessKeyKind.FILLER: sa.ORDER_KEY,
    BusinessKeyKind.ACCESSION: sa.ORDER_KEY,
    BusinessKeyKind.CONTROL_ID: sa.MESSAGE_KEY,
}


class SearchRequest(BaseModel):
    """What the search box sends. ``value`` is what the person typed (PHI: body only)."""

    model_config = ConfigDict(extra="forbid")

    kind: BusinessKeyKind
    value: str = Field(min_length=1, max_length=200)
    facility: str | None = Field(default=None, min_length=1, max_length=100)


class SearchAnswer(BaseModel):
    kind: BusinessKeyKind
    exchanges: list[ExchangeHit]


async def find_exchanges(
    context: ApiContext, key: BusinessKeyKind, value: str, facility: str | None = None
) -> list[ExchangeHit]:
    """The exchanges whose messages carried ``value`` as a ``key`` (optionally at one
    facility), newest first, at most MAX_HITS. Raises ApiRefusal 400 for a blank value."""
    if not value.strip():
        raise ApiRefusal(400, "invalid", f"the {key.value} to search for is empty")
    hashed = search_pseudonym(context.settings.resolved_pseudonym_key(), key, value)
    query = f"{_ATTRIBUTE_OF[key].name} = '{hashed}'"
    if facility is not None and facility.strip():
        # Facility attributes hold id_part codes (exchanges/sdk.py), so the typed code is
        # cleaned the same way; id_part leaves no quote to escape.
        query += f" AND Facility = '{id_part(facility)}'"
    try:
        return [
            _hit(execution)
            async for execution in context.temporal_client.list_workflows(
                query, limit=MAX_HITS, rpc_timeout=_RPC_TIMEOUT
            )
        ]
    except RPCError as err:
        raise ApiRefusal(503, "transient", f"Temporal visibility: {err.status.name}") from err


def _hit(execution: WorkflowExecution) -> ExchangeHit:
    attributes = execution.typed_search_attributes
    return ExchangeHit(
        workflow_id=execution.id,
        run_id=execution.run_id,
        exchange=attributes.get(sa.EXCHANGE),
        exchange_status=attributes.get(sa.EXCHANGE_STATUS) or attributes.get(sa.LEGACY_STATUS),
        facility=attributes.get(sa.FACILITY),
        review_state=attributes.get(sa.REVIEW_STATE),
        execution_status=execution.status.name if execution.status else None,
        start_time=execution.start_time,
        close_time=execution.close_time,
    )


async def exchange_timeline(
    context: ApiContext, workflow_id: str, *, with_messages: bool = False
) -> ExchangeTimeline:
    """One exchange, moment by moment: its latest run's history (messages received, steps
    scheduled / completed / failed with their summaries, review decisions, status changes)
    merged with the audit trail's rows about it, oldest first. Payloads are decoded with
    the API client's data converter; only PHI-free fields of them are kept, unless
    ``with_messages`` asks for each received message's text (the signed-in exchange page).

    Raises ApiRefusal 404 when Temporal knows no such workflow.
    """
    handle = context.temporal_client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe(rpc_timeout=_RPC_TIMEOUT)
        history = await handle.fetch_history(rpc_timeout=_RPC_TIMEOUT)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise ApiRefusal(404, "not-found", "no exchange has this id") from err
        raise ApiRefusal(503, "transient", f"Temporal: {err.status.name}") from err
    reader = _HistoryReader(
        context.temporal_client.data_converter,
        context.settings.resolved_pseudonym_key(),
        with_messages=with_messages,
    )
    entries = [entry for event in history.events for entry in await reader.read(event)]
    entries += await _audit_entries(context, workflow_id)
    entries.sort(key=lambda entry: entry.at)  # stable: history first at equal times
    attributes = description.typed_search_attributes
    return ExchangeTimeline(
        workflow_id=workflow_id,
        exchange=attributes.get(sa.EXCHANGE),
        exchange_status=attributes.get(sa.EXCHANGE_STATUS) or attributes.get(sa.LEGACY_STATUS),
        execution_status=description.status.name if description.status else None,
        entries=tuple(entries),
    )


class _HistoryReader:
    """Turns history events into timeline entries; remembers scheduled activities so a
    completion names its step."""

    def __init__(
        self, converter: DataConverter, pseudonym_key: bytes, *, with_messages: bool
    ) -> None:
        self._converter = converter
        self._pseudonym_key = pseudonym_key
        self._with_messages = with_messages
        self._steps: dict[int, tuple[str, str]] = {}

    async def read(self, event: HistoryEvent) -> list[TimelineEntry]:
        at = event.event_time.ToDatetime(tzinfo=UTC)
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = event.workflow_execution_started_event_attributes
            return [
                self._entry(
                    at,
                    TimelineKind.STARTED,
                    "exchange started",
                    event,
                    name=started.workflow_type.name,
                )
            ]
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            return [await self._message(at, event)]
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            summary = await self._text(event.user_metadata.summary) or scheduled.activity_type.name
            self._steps[event.event_id] = (scheduled.activity_type.name, summary)
            return [
                self._entry(
                    at,
                    TimelineKind.STEP_SCHEDULED,
                    summary,
                    event,
                    name=scheduled.activity_type.name,
                )
            ]
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            scheduled_id = event.activity_task_completed_event_attributes.scheduled_event_id
            return [self._step_end(at, TimelineKind.STEP_COMPLETED, scheduled_id, event, "")]
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = event.activity_task_failed_event_attributes
            error_type = failed.failure.application_failure_info.type or "failure"
            return [
                self._step_end(
                    at, TimelineKind.STEP_FAILED, failed.scheduled_event_id, event, error_type
                )
            ]
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            scheduled_id = event.activity_task_timed_out_event_attributes.scheduled_event_id
            return [self._step_end(at, TimelineKind.STEP_FAILED, scheduled_id, event, "timed out")]
        if kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            return await self._local_step(at, event)
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            return await self._review(at, event)
        if kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes
            return [
                self._entry(at, TimelineKind.STATUS_CHANGED, f"status {status}", event, name=name)
                for name in (sa.EXCHANGE_STATUS.name, sa.LEGACY_STATUS.name)
                if (payload := fields.search_attributes.indexed_fields.get(name)) is not None
                and (status := self._attribute_text(payload))
            ]
        if kind in _CLOSE_EVENTS:
            return [self._entry(at, TimelineKind.CLOSED, _CLOSE_EVENTS[kind], event)]
        return []

    async def _message(self, at: datetime, event: HistoryEvent) -> TimelineEntry:
        signaled = event.workflow_execution_signaled_event_attributes
        message: InboundMessage | None = None
        if signaled.input.payloads:
            [decoded] = await self._converter.decode(signaled.input.payloads[:1], [InboundMessage])
            message = decoded if isinstance(decoded, InboundMessage) else None
        if message is None:
            return self._entry(
                at, TimelineKind.MESSAGE_RECEIVED, "signal", event, name=signaled.signal_name
            )
        control_key = search_pseudonym(
            self._pseudonym_key, BusinessKeyKind.CONTROL_ID, message.control_id
        )
        return self._entry(
            at,
            TimelineKind.MESSAGE_RECEIVED,
            f"{message.message_type} received",
            event,
            name=signaled.signal_name,
            message_type=message.message_type,
            control_id_key=control_key,
            message_text=message.text if self._with_messages else None,
        )

    async def _review(self, at: datetime, event: HistoryEvent) -> list[TimelineEntry]:
        request = event.workflow_execution_update_accepted_event_attributes.accepted_request
        if not request.input.args.payloads:
            return []
        [decision] = await self._converter.decode(request.input.args.payloads[:1], [ReviewDecision])
        if not isinstance(decision, ReviewDecision):
            return []
        return [
            self._entry(
                at,
                TimelineKind.REVIEW,
                f"review {decision.action.value} by {decision.reviewer}",
                event,
                name=request.input.name,
                review_id=decision.review_id,
                action=decision.action.value,
                reviewer=decision.reviewer,
            )
        ]

    async def _local_step(self, at: datetime, event: HistoryEvent) -> list[TimelineEntry]:
        """A local activity (parse, routing, a lab FHIR write tried in the workflow task):
        one marker, shown as its step scheduled and its step done or failed."""
        marker = event.marker_recorded_event_attributes
        if marker.marker_name != _LOCAL_ACTIVITY_MARKER or "data" not in marker.details:
            return []
        # The SDK's own bookkeeping, plain JSON by design (never through the codec).
        data = json.loads(marker.details["data"].payloads[0].data)
        name = str(data.get("activity_type", ""))
        summary = await self._text(event.user_metadata.summary) or name
        scheduled = data.get("original_schedule_time") or {}
        started = datetime.fromtimestamp(
            int(scheduled.get("seconds", at.timestamp())) + int(scheduled.get("nanos", 0)) / 1e9,
            tz=UTC,
        )
        end_kind, end_text = TimelineKind.STEP_COMPLETED, summary
        if marker.HasField("failure"):
            error_type = marker.failure.application_failure_info.type or "failure"
            end_kind, end_text = TimelineKind.STEP_FAILED, f"{summary}: {error_type}"
        return [
            self._entry(min(started, at), TimelineKind.STEP_SCHEDULED, summary, event, name=name),
            self._entry(at, end_kind, end_text, event, name=name),
        ]

    def _step_end(
        self, at: datetime, kind: TimelineKind, scheduled_id: int, event: HistoryEvent, why: str
    ) -> TimelineEntry:
        name, summary = self._steps.get(scheduled_id, ("", "step"))
        text = f"{summary}: {why}" if why else summary
        return self._entry(at, kind, text, event, name=name)

    def _attribute_text(self, payload: Payload) -> str:
        """A search attribute's value: plain JSON by design, never through the codec
        (whose strict decoding refuses unencrypted payloads)."""
        value = self._converter.payload_converter.from_payload(payload, str)
        return value if isinstance(value, str) else ""

    async def _text(self, payload: Payload) -> str:
        if not payload.data and not payload.metadata:
            return ""
        [value] = await self._converter.decode([payload], [str])
        return value if isinstance(value, str) else ""

    @staticmethod
    def _entry(
        at: datetime, kind: TimelineKind, summary: str, event: HistoryEvent, **fields: Any
    ) -> TimelineEntry:
        return TimelineEntry(at=at, kind=kind, summary=summary, event_id=event.event_id, **fields)


_LOCAL_ACTIVITY_MARKER = "core_local_activity"
_CLOSE_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "exchange completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: "exchange failed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: "exchange timed out",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: "exchange terminated",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED: "exchange cancelled",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued as a new run",
}


@functools.lru_cache(maxsize=4)
def _audit_log(database_url: str) -> AuditLog:
    return AuditLog(open_engine(database_url))


async def _audit_entries(context: ApiContext, workflow_id: str) -> list[TimelineEntry]:
    log = _audit_log(context.settings.resolved_database_url)
    rows = await asyncio.to_thread(log.records, exchange=workflow_id)
    return [
        TimelineEntry(
            at=row.recorded_at if row.recorded_at.tzinfo else row.recorded_at.replace(tzinfo=UTC),
            kind=TimelineKind.AUDIT,
            summary=" ".join(
                part for part in (row.action, row.resource or "", row.outcome, row.detail) if part
            ),
            name=row.action,
            audit_seq=row.seq,
        )
        for row in rows
    ]


@router.post("/exchanges/search")
async def search_exchanges(body: SearchRequest, identity: Viewer, context: Context) -> SearchAnswer:
    hits = await find_exchanges(context, body.kind, body.value, body.facility)
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.ACCESS,
            AuditOutcome.SUCCESS,
            resource="exchange-search",
            # Which kind of key, never the value typed.
            detail=f"searched by {body.kind.value}"
            + (f" at {id_part(body.facility)}" if body.facility else "")
            + f": {len(hits)} exchange(s)",
        )
    )
    return SearchAnswer(kind=body.kind, exchanges=hits)


@router.get("/exchanges/{workflow_id:path}/timeline")
async def show_timeline(workflow_id: str, identity: Viewer, context: Context) -> ExchangeTimeline:
    timeline = await exchange_timeline(context, workflow_id)
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.ACCESS,
            AuditOutcome.SUCCESS,
            workflow_id,
            detail=f"timeline: {len(timeline.entries)} entries",
            resource="exchange-timeline",
        )
    )
    return timeline
