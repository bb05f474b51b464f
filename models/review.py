"""Human review: what a workflow asks a reviewer, and what the reviewer decides."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ReviewAction(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    RETRY = "retry"
    # Ordered delivery: let the queue move on without this event, or send a corrected one.
    SKIP = "skip"
    EDIT = "edit"


class ReviewReason(StrEnum):
    UNMAPPED_CODE = "unmapped-code"
    UNKNOWN_ORDER = "unknown-order"
    FHIR_REJECTED = "fhir-rejected"
    INVALID_MESSAGE = "invalid-message"
    DELIVERY_FAILED = "delivery-failed"
    # Discharge sync: an A08 changing diagnoses after the encounter's exchange closed.
    UPDATE_AFTER_CLOSE = "update-after-close"


class ReviewRequest(BaseModel):
    """What a reviewer is asked. ``summary`` names codes and fields, never patient data."""

    model_config = ConfigDict(frozen=True)

    review_id: str
    reason: ReviewReason
    summary: str
    details: tuple[str, ...] = ()
    # What each action will do for this particular request, shown in `careweave review list`.
    actions: dict[ReviewAction, str] = Field(default_factory=dict)
    requested_at: datetime


class ReviewDecision(BaseModel):
    """A reviewer's decision, sent as a Temporal update; the validator refuses malformed ones."""

    model_config = ConfigDict(frozen=True)

    review_id: str
    action: ReviewAction
    reason: str
    # The verified subject of the reviewer's token (set by the API, never typed by a person),
    # with the role it acted in and the issuer that vouched for it.
    reviewer: str
    reviewer_role: str | None = None
    identity_issuer: str | None = None
    # EDIT only: the corrected HL7 v2 message to send instead (kept in the history).
    edited_message: str | None = None
    # The API's signature over all of the above and the exchange's workflow id
    # (adapters/decision_proof.py); the worker refuses a decision without a valid one before
    # it enters the history. Optional only so that histories recorded before it replay.
    proof: str | None = None


class ReviewRecord(BaseModel):
    """A request and its decision, kept in workflow state so every choice is attributable."""

    model_config = ConfigDict(frozen=True)

    request: ReviewRequest
    decision: ReviewDecision
    decided_at: datetime
