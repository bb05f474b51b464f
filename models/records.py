"""Careweave's own tables (sqlmodel): quarantined messages, message receipts, the audit trail."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel


class QuarantineStatus(StrEnum):
    HELD = "held"
    RELEASED = "released"


class QuarantinedMessage(SQLModel, table=True):
    """The raw bytes of a message Careweave refused, kept so nothing is lost.

    ``reason`` names the segment/field and the rule, never the content; ``raw``
    holds the bytes exactly as received, sealed with the payload key ring (AES-256-GCM)
    by CareweaveStore, which hands them back decrypted.
    """

    __tablename__ = "quarantined_message"

    id: int | None = Field(default=None, primary_key=True)
    received_at: datetime = Field(index=True)
    peer: str
    ack_code: str
    error_code: str
    reason: str
    message_type: str = ""
    control_id: str = ""
    raw: bytes
    status: str = Field(default=QuarantineStatus.HELD.value, index=True)
    released_at: datetime | None = None
    released_by: str | None = None
    release_result: str | None = None


class MessageReceipt(SQLModel, table=True):
    """A message Temporal durably accepted, keyed the way HL7 identifies a resend.

    Looked up before committing so a resent message is acknowledged again
    without touching its exchange a second time.
    """

    __tablename__ = "message_receipt"

    sending_facility: str = Field(primary_key=True)
    control_id: str = Field(primary_key=True)
    workflow_id: str
    message_type: str
    received_at: datetime


class PayloadKeyCheck(SQLModel, table=True):
    """A known text sealed under each payload key the first time it was used.

    A process that starts with a key of the same id but other bytes fails to open it,
    which turns a wrong key into a clear startup error instead of unreadable histories.
    """

    __tablename__ = "payload_key_check"

    key_id: str = Field(primary_key=True)
    sealed_check: bytes
    first_used_at: datetime


class AuditRecord(SQLModel, table=True):
    """One row of the append-only audit trail (see adapters/audit_log.py).

    ``hash`` is SHA-256 over the canonical form of every other column, ``prev_hash``
    included, so editing, deleting or reordering rows breaks the chain at that row.
    The database refuses UPDATE and DELETE with a trigger; the chain catches whoever
    goes around it.
    """

    __tablename__ = "audit_event"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    # Timezone-aware where the database keeps zones (PostgreSQL); SQLite returns it naive,
    # and the hash reads a naive time as UTC, so both give the same hash.
    recorded_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)
    actor_kind: str
    actor: str
    action: str = Field(index=True)
    outcome: str
    exchange: str | None = Field(default=None, index=True)
    resource: str | None = None
    detail: str = ""
    prev_hash: str
    hash: str


class ReviewAssignment(SQLModel, table=True):
    """A reviewer took a pending review ("Assign to me"). Rows are only ever added: the
    newest row of a review says who has it now, the older ones who had it before."""

    __tablename__ = "review_assignment"

    id: int | None = Field(default=None, primary_key=True)
    # The exchange's workflow id (pseudonymous by construction) and its review ("r2").
    exchange: str = Field(index=True)
    review_id: str
    assignee: str
    assigned_at: datetime = Field(sa_type=DateTime(timezone=True))


class BatchStatus(StrEnum):
    HELD = "held"  # a trailer count does not add up: nothing applied, an operator decides
    APPLYING = "applying"  # started; `applied` says how far
    DONE = "done"


class BatchIngestion(SQLModel, table=True):
    """One upstream batch file and how far its ingestion went, keyed by the file's digest,
    so `careweave ingest-batch` run again on the same bytes continues where it stopped.

    ``steps`` are the file's bad messages (quarantined) then its good ones in clinical
    order; ``applied`` of them are done. ``order_digest`` fingerprints that order: a run
    that would order the file differently (another local zone, other supported types)
    does not trust ``applied`` and relies on the receipts alone. No message content.
    """

    __tablename__ = "batch_ingestion"

    digest: str = Field(primary_key=True)  # SHA-256 of the file's bytes
    file_name: str
    status: str = Field(index=True)
    steps: int
    applied: int = 0
    order_digest: str
    first_seen_at: datetime = Field(sa_type=DateTime(timezone=True))
    applying_since: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    updated_at: datetime = Field(sa_type=DateTime(timezone=True))
    trailer_mismatch_accepted_by: str | None = None
