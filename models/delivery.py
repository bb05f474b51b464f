"""Ordered delivery: what travels from an exchange to a destination's per-patient queue."""

from __future__ import annotations

from datetime import datetime
from typing import Self

from pydantic import BaseModel, ConfigDict, model_validator

from models.destinations import DeliveryPolicy, Subscription
from models.discharge import AdtEvent
from models.merge import MergeAnnouncement

# History events after which the delivery workflow continues as new (before its next send).
CONTINUE_AS_NEW_AFTER_EVENTS = 2_000


class DeliveryItem(BaseModel):
    """One event for one destination. ``event_id`` has no PHI: exchange key + MSH-10.

    Either a discharge-sync ADT ``event`` with the message as received, or a patient-merge
    ``announcement`` (A40 / A37), whose message is built when it is delivered.
    """

    model_config = ConfigDict(frozen=True)

    event_id: str
    subscription: Subscription
    exchange_id: str
    event: AdtEvent | None = None
    announcement: MergeAnnouncement | None = None
    # The HL7 v2 message as received; MLLP destinations get it readdressed, unchanged.
    # Empty for an announcement.
    message_text: str = ""
    mapping_version: str
    routing_version: str
    policy: DeliveryPolicy

    @model_validator(mode="after")
    def _one_payload(self) -> Self:
        if (self.event is None) == (self.announcement is None):
            raise ValueError("a delivery item carries an ADT event or a merge announcement")
        return self


class DeliveryRecord(BaseModel):
    """One line of the destination's delivery log (queryable): no PHI."""

    event_id: str
    subscription: Subscription
    outcome: str  # delivered | skipped | edited | handed-over
    attempts: int
    detail: str = ""


class DeliveryState(BaseModel):
    """The delivery workflow's input, and what it carries across continue-as-new."""

    destination: str
    kind: str
    patient_key: str
    idle_close_seconds: float
    queue: list[DeliveryItem] = []
    # Event ids already handled (bounded), so a re-sent enqueue is not delivered twice.
    recent_event_ids: list[str] = []
    delivered: int = 0
    skipped: int = 0
    failing: bool = False
    # The last deliveries (bounded like recent_event_ids), so the log survives continue-as-new.
    delivery_log: list[DeliveryRecord] = []
    continue_as_new_after_events: int = CONTINUE_AS_NEW_AFTER_EVENTS
    # When each queued event arrived (event id -> time), for the destination's oldest held
    # event while it is down.
    arrived_at: dict[str, datetime] = {}
    # How long a queue waits for its destination health workflow's answer (send or hold)
    # before sending anyway (no health workflow answering must not stop deliveries).
    health_answer_timeout_seconds: float = 30.0


class DeliverRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    destination: str
    item: DeliveryItem
    # Set when a reviewer chose "edit": send this message instead (still readdressed).
    replacement_message: str | None = None
    # Incremented on an edit so the corrected message gets its own MSH-10.
    revision: int = 0
    # The workflow's own count of sends of this event (it retries with single-attempt
    # activities, so Temporal's attempt is always 1): the audit trail's retry rows follow it.
    attempt: int = 1


class DeliverResult(BaseModel):
    detail: str


class QueueHandOver(BaseModel):
    """To a merged-away patient's delivery queue of one destination: send what you still
    hold to the survivor's queue, in your order, then ``announcement`` (the merge's A40), so
    the destination receives the merge after every earlier event of both records. PHI: a
    signal payload only."""

    model_config = ConfigDict(frozen=True)

    survivor_patient_key: str  # the survivor's queue key (a pseudonym)
    announcement: DeliveryItem
