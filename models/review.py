"""Human review: what a workflow asks a reviewer, and what the reviewer decides."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.demographics import PersonIdentifier
from models.lab import PatientRef
from models.patient_match import MatchScore


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
    # Order-to-result: the result's PID names another patient than its order (same
    # placer number, another MRN of the same assigning authority): never published unseen.
    PATIENT_MISMATCH = "patient-mismatch"
    # Patient merge: the two records may not be one person (score, a birth date or sex
    # conflict, a record never seen); nothing is merged until a person decides.
    UNCERTAIN_MERGE = "uncertain-merge"


class UnmappedObservation(BaseModel):
    """One result line whose local code has no LOINC. Its value is clinical data: it
    travels only in the workflow's state, which the payload codec encrypts."""

    model_config = ConfigDict(frozen=True)

    code: str
    coding_system: str = ""
    text: str = ""
    value: str = ""
    unit: str = ""


class UnmappedCodeContext(BaseModel):
    """Unmapped local code: what the reviewer weighs against the concept map."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["unmapped-code"] = "unmapped-code"
    mapping_version: str
    observations: tuple[UnmappedObservation, ...] = ()


class UnknownOrderContext(BaseModel):
    """Result without an order: the held messages as received, for the page to show."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["unknown-order"] = "unknown-order"
    facility: str
    mapping_version: str
    held_messages: tuple[str, ...] = ()


class PatientMismatchContext(BaseModel):
    """Result for another patient than its order: both patients as their messages name
    them (PHI: encrypted with the workflow's state, shown to signed-in reviewers only)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["patient-mismatch"] = "patient-mismatch"
    order_patient: PatientRef
    result_patient: PatientRef


class UnorderedStudyContext(BaseModel):
    """A study in the PACS no order claims: who its DICOM header names, and the one Patient
    the FHIR server has for them, or why there is none (PHI: encrypted with the workflow's
    state, shown to signed-in reviewers only)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["unordered-study"] = "unordered-study"
    study_instance_uid: str
    study_patient: PatientRef
    number_of_series: int
    number_of_instances: int
    # The Patient an approve publishes the study for ("" when there is none to name).
    subject_reference: str = ""
    # Why approve is refused (no PHI: field names and counts).
    patient_not_found: str = ""


class DeliveryFailureContext(BaseModel):
    """Failed delivery: where it went, what was sent and what the partner answered."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["delivery-failed"] = "delivery-failed"
    destination: str
    destination_kind: str
    event_id: str
    attempts: int
    error_type: str = ""
    # The partner's raw ACK (MLLP), empty when it never answered or the destination is FHIR.
    raw_answer: str = ""
    # The message as sent (readdressed); the message received, when the activity did not say.
    sent_message: str = ""


class MergeReviewContext(BaseModel):
    """An uncertain merge: the two records field by field and why a person must decide
    (PHI: encrypted with the workflow's state, shown to signed-in reviewers only)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["uncertain-merge"] = "uncertain-merge"
    trigger: str
    survivor: PersonIdentifier
    retired: PersonIdentifier | None
    survivor_patient: str
    retired_patient: str = ""
    score: MatchScore | None = None
    # Why it was not merged without a person (no PHI: field names and thresholds).
    doubts: tuple[str, ...] = ()


# What the review page shows beside the summary; one kind per review reason that has one.
ReviewContext = Annotated[
    UnmappedCodeContext
    | UnknownOrderContext
    | UnorderedStudyContext
    | DeliveryFailureContext
    | PatientMismatchContext
    | MergeReviewContext,
    Field(discriminator="kind"),
]


class ReviewRequest(BaseModel):
    """What a reviewer is asked. ``summary`` names codes and fields, never patient data;
    ``context`` (encrypted with the workflow's state) may carry it for the review page."""

    model_config = ConfigDict(frozen=True)

    review_id: str
    reason: ReviewReason
    summary: str
    details: tuple[str, ...] = ()
    # What each action will do for this particular request, shown in `careweave review list`.
    actions: dict[ReviewAction, str] = Field(default_factory=dict)
    # Actions this request refuses, each with why (the validator's answer to a reviewer who
    # tries one): e.g. an approve that would have to guess the patient.
    refused_actions: dict[ReviewAction, str] = Field(default_factory=dict)
    requested_at: datetime
    # None in reviews asked before contexts existed: the page shows them the generic way.
    context: ReviewContext | None = None


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
