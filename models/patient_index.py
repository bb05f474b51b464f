"""The master patient index: enterprise ids, the source identifiers linked to them, and the
history of every change (sqlmodel tables; operations in adapters/patient_index.py).

No row is ever deleted (database triggers refuse it). Source identifiers are PHI: a row
holds a keyed pseudonym to find it by and the identifier itself only sealed with the
payload key ring; messages are named by a pseudonym of sending facility + MSH-10.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel


class SourceIdentifier(BaseModel):
    """One patient identifier as a source system assigned it (HL7 CX: CX-1 id, CX-4
    assigning authority, CX-5 identifier type). All three are part of its identity: an
    authority may issue the same number as an MRN and as an account number."""

    model_config = ConfigDict(frozen=True)

    assigning_authority: str
    value: str
    identifier_type: str = "MR"


class MessageRef(BaseModel):
    """The message that asked for a change (MSH-4 sending facility, MSH-10 control id);
    stored only as a pseudonym."""

    model_config = ConfigDict(frozen=True)

    sending_facility: str
    control_id: str


class IdentifierStatus(StrEnum):
    ACTIVE = "active"
    # Merged into another record (MRG-1 of an A40): kept, never reused.
    RETIRED = "retired"


class IdentityEventKind(StrEnum):
    # An identifier seen for the first time, linked to a new enterprise id.
    ENROL = "enrol"
    # Two identifiers declared the same person, both stay in use (ADT^A24).
    LINK = "link"
    # An identifier taken out of its enterprise id into a new one of its own (ADT^A37).
    UNLINK = "unlink"
    # A retired identifier and everything linked to it moved to the survivor's (ADT^A40).
    MERGE = "merge"
    # A merge taken back exactly (careweave merge undo).
    UNMERGE = "unmerge"


class EnterpriseIdentity(SQLModel, table=True):
    """One person as Careweave knows them; rows are only ever added."""

    __tablename__ = "enterprise_identity"

    enterprise_id: str = Field(primary_key=True)
    created_at: datetime = Field(sa_type=DateTime(timezone=True))


class PatientIdentifierLink(SQLModel, table=True):
    """A source identifier and the enterprise id it is linked to now.

    ``enterprise_id`` and ``status`` are the only columns that change (a trigger refuses
    any other update and every delete); each change is an IdentityEvent row that holds the
    values before and after.
    """

    __tablename__ = "patient_identifier_link"

    id: int | None = Field(default=None, primary_key=True)
    # Keyed HMAC of (authority, type, value): how an identifier is found without reading it.
    lookup: str = Field(unique=True, index=True)
    # The SourceIdentifier as JSON, sealed with the payload key ring (AES-256-GCM).
    sealed_identifier: bytes
    enterprise_id: str = Field(index=True, foreign_key="enterprise_identity.enterprise_id")
    status: str = IdentifierStatus.ACTIVE.value
    created_at: datetime = Field(sa_type=DateTime(timezone=True))


class IdentityEvent(SQLModel, table=True):
    """One change to the index, append-only: who, when, why, which message, which exchange.

    ``changes`` is JSON, a list of ``{"link": <row id>, "enterprise_before": ...,
    "enterprise_after": ..., "status_before": ..., "status_after": ...}``: enough to put
    every link back exactly. Row ids and enterprise ids are not PHI; the free-text reason
    may be, so it is sealed.
    """

    __tablename__ = "identity_event"

    id: int | None = Field(default=None, primary_key=True)
    recorded_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)
    kind: str = Field(index=True)
    actor: str
    sealed_reason: bytes
    # The HL7 trigger event that asked for it (A40, A24, A37...), "" when a person did.
    trigger_event: str = ""
    # Pseudonym of (sending facility, MSH-10); None when no message asked.
    message: str | None = Field(default=None, index=True)
    # The workflow id of the exchange that made the change (pseudonymous by construction).
    exchange: str | None = Field(default=None, index=True)
    # A second request for the same change finds the first by this key and changes nothing.
    idempotency_key: str | None = Field(default=None, unique=True)
    # The identifier the event is about (merge: the retired one) and the other one
    # (merge: the survivor; link/unlink: the identifier it was linked with).
    subject_link: int
    other_link: int | None = None
    enterprise_id: str
    # The event this one takes back (an unmerge names its merge).
    undoes_event: int | None = Field(default=None, index=True)
    # The merge named an identifier the index had never seen: a person should look.
    flagged_for_review: bool = False
    changes: str = "[]"
