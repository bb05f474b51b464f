"""Finding exchanges by business keys, and an exchange's timeline: what the search API and
pages read. Every field is PHI-free: ids, codes, pseudonyms, times and counts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class BusinessKeyKind(StrEnum):
    """What a user can type in the search box, and which search attribute holds it."""

    MRN = "mrn"  # PID-3.1 (any repetition)
    VISIT = "visit"  # PV1-19 visit number
    PLACER = "placer"  # ORC-2 / OBR-2 placer order number
    FILLER = "filler"  # ORC-3 / OBR-3 filler order number
    ACCESSION = "accession"  # OBR-18 (placer field 1, the accession in imaging orders)
    CONTROL_ID = "control-id"  # MSH-10 of a message the exchange received


class BusinessKeys(BaseModel):
    """Keyed pseudonyms (``exchanges.sdk.search_pseudonym``) of one message's business keys,
    grouped by the search attribute that holds them: PatientKey, OrderKey, MessageKey."""

    model_config = ConfigDict(frozen=True)

    patient: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    message: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.patient or self.order or self.message)


class ExchangeHit(BaseModel):
    """One exchange found by a business key."""

    model_config = ConfigDict(frozen=True)

    workflow_id: str
    run_id: str | None
    exchange: str | None  # "order-to-result", ...
    exchange_status: str | None  # the exchange's own status ("ordered", "final", ...)
    facility: str | None
    review_state: str | None  # "pending", "decided", or None when never reviewed
    execution_status: str | None  # Temporal's: "RUNNING", "COMPLETED", "FAILED", ...
    start_time: datetime
    close_time: datetime | None


class TimelineKind(StrEnum):
    MESSAGE_RECEIVED = "message-received"  # a signal carrying an HL7 message
    STEP_SCHEDULED = "step-scheduled"  # an activity (parse, FHIR write, delivery) asked for
    STEP_COMPLETED = "step-completed"
    STEP_FAILED = "step-failed"
    REVIEW = "review"  # a review decision (update)
    STATUS_CHANGED = "status-changed"  # the exchange status search attribute changed
    STARTED = "started"
    CLOSED = "closed"
    AUDIT = "audit"  # a row of the audit trail about this exchange


class TimelineEntry(BaseModel):
    """One moment of an exchange. ``summary`` is Careweave's own text (activity summaries,
    message types, codes), never message content."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    kind: TimelineKind
    summary: str
    # The activity type, signal or update name, or audit action.
    name: str = ""
    # A received message: its type (e.g. "ORU^R01") and MSH-10 pseudonym.
    message_type: str | None = None
    control_id_key: str | None = None
    # A review decision.
    review_id: str | None = None
    action: str | None = None
    reviewer: str | None = None
    # A received message's text, decoded: only for the signed-in exchange page, which asks
    # for it (exchange_timeline(..., with_messages=True)); never in the JSON timeline.
    message_text: str | None = None
    # A history event's id, or the audit row's sequence number.
    event_id: int | None = None
    audit_seq: int | None = None


class ExchangeTimeline(BaseModel):
    model_config = ConfigDict(frozen=True)

    workflow_id: str
    exchange: str | None
    exchange_status: str | None
    execution_status: str | None
    entries: tuple[TimelineEntry, ...]
