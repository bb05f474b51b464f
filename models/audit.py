"""What the audit trail records: who did what to which exchange and resource, and how it ended.

An entry carries identifiers and outcomes only, never patient data: `exchange` is a
workflow id (pseudonymous by construction), `resource` names a FHIR resource type, a
destination or a quarantine row, and `detail` is a short code-like text written by
Careweave, not copied from a message.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ActorKind(StrEnum):
    USER = "user"  # an authenticated reviewer or operator
    SERVICE = "service"  # a Careweave process (worker, gateway, API)
    PARTNER = "partner"  # a sending or receiving hospital system


class AuditAction(StrEnum):
    RECEIVE = "receive"  # a message accepted or refused at the gateway
    ACCESS = "access"  # a person or service read clinical data (review list, quarantine show)
    TRANSFORM = "transform"  # a message parsed / mapped
    PUSH = "push"  # a write to a destination (FHIR, MLLP partner)
    RETRY = "retry"  # a repeated attempt of a step that failed before
    EXCEPTION = "exception"  # a step that failed
    REVIEW_DECISION = "review-decision"
    REVIEW_ASSIGNMENT = "review-assignment"  # a reviewer took a pending review
    DECODE = "decode"  # payloads decoded through the codec endpoint
    RELEASE = "release"  # a quarantined message resubmitted
    LOGIN = "login"
    ACCOUNT = "account"  # a user added, changed or removed: who gave access to whom
    # A command on a workflow, schedule, batch or namespace asked through the Temporal UI
    # behind the API (terminate, signal, reset, ...): refused, the UI there is read-only.
    WORKFLOW_COMMAND = "workflow-command"
    # A destination's health changed (up / degraded / down), by its queues' failures, a
    # probe or an operator's command (`careweave destination down|up`).
    DESTINATION_STATE = "destination-state"
    MERGE_UNDO = "merge-undo"  # an operator asked to undo a patient merge


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    REFUSED = "refused"  # authentication / authorization / validation said no


class AuditEntry(BaseModel):
    """One event to append; the log adds the sequence number, time and hash chain."""

    model_config = ConfigDict(frozen=True)

    actor_kind: ActorKind
    actor: str = Field(min_length=1, max_length=200)
    action: AuditAction
    outcome: AuditOutcome
    exchange: str | None = Field(default=None, max_length=300)
    resource: str | None = Field(default=None, max_length=300)
    detail: str = Field(default="", max_length=500)


class BreakKind(StrEnum):
    EDITED = "edited"  # the row's own hash no longer matches its fields
    MISSING = "missing"  # a sequence number is skipped: rows deleted
    RELINKED = "relinked"  # prev_hash is not the hash before it: reordered or inserted
    # Against an anchor (seq and hash kept outside the database): the chain itself can be
    # intact and still have lost its newest rows, or have been rebuilt from some row on.
    TRUNCATED = "truncated"  # the anchored row is gone: rows cut from the end
    REWRITTEN = "rewritten"  # the anchored row is there with another hash


class ChainBreak(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int  # the first row whose link to the chain does not hold
    kind: BreakKind
    reason: str


class AuditAnchor(BaseModel):
    """A row's seq and hash noted outside Careweave's database (`audit verify` prints it)."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def parse(cls, text: str) -> AuditAnchor:
        """`SEQ:HASH`, as `careweave audit verify` prints it; ValueError when it is not."""
        seq, separator, digest = text.strip().partition(":")
        if not separator or not seq.isdigit():
            raise ValueError("an anchor is SEQ:HASH, e.g. 1024:9f2c...")
        return cls(seq=int(seq), hash=digest.lower())

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


class AuditVerification(BaseModel):
    """What `careweave audit verify` reports: rows checked, and the first broken link."""

    model_config = ConfigDict(frozen=True)

    rows_checked: int
    last_seq: int | None = None
    last_hash: str | None = None
    first_break: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        return self.first_break is None
