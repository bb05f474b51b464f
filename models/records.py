"""Careweave's own tables (sqlmodel): quarantined messages and message receipts."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

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
