"""The master patient index in Careweave's database: resolve, merge, undo, link, unlink.

Synchronous like the other stores (async callers use asyncio.to_thread); knows nothing of
Temporal. Every change is one transaction under an index-wide write lock that reads the
current links, writes the new ones and appends the IdentityEvent holding before and
after, so a change is never half-applied and an undo puts back exactly what was there.

A change that names a message (sending facility + MSH-10) is idempotent: asking again
for the same change from the same message finds the first event and changes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from adapters.audit_log import install_keep_rows_guard
from adapters.payload_crypto import KeyRing
from adapters.pseudonyms import pseudonym
from models.errors import RequestRefused
from models.patient_index import (
    EnterpriseIdentity,
    IdentifierStatus,
    IdentityEvent,
    IdentityEventKind,
    MessageRef,
    PatientIdentifierLink,
    SourceIdentifier,
)

__all__ = [
    "IdentityChangeRefused",
    "IdentityHistoryEntry",
    "IdentityResolution",
    "LinkRecorded",
    "LinkedIdentifier",
    "MergeRecorded",
    "PatientIndex",
    "UnmergeRecorded",
    "ensure_patient_index_schema",
]

_IDENTIFIER_COLUMN = "patient_identifier_link.sealed_identifier"
_REASON_COLUMN = "identity_event.sealed_reason"
# Any fixed 64-bit number: the key of the index's PostgreSQL advisory lock.
_POSTGRES_INDEX_LOCK = 0x43574D5049  # "CWMPI"
_TABLES = [
    EnterpriseIdentity.__table__,  # type: ignore[attr-defined]
    PatientIdentifierLink.__table__,  # type: ignore[attr-defined]
    IdentityEvent.__table__,  # type: ignore[attr-defined]
]


class IdentityChangeRefused(RequestRefused, ValueError):
    """The index cannot make this change as asked (the text says why; no PHI in it)."""


@dataclass(frozen=True)
class IdentityResolution:
    enterprise_id: str
    link_id: int
    # True when this call saw the identifier for the first time and enrolled it.
    enrolled: bool


@dataclass(frozen=True)
class MergeRecorded:
    event_id: int
    # The survivor's enterprise id, which the retired identifier now belongs to.
    enterprise_id: str
    # The index had never seen the retired identifier: it was created for this merge,
    # the merge recorded, and a person should look (flag_for_review).
    retired_was_unknown: bool
    survivor_was_unknown: bool
    flag_for_review: bool
    # Links whose enterprise id or status the merge changed.
    changed_links: int
    # The same merge from the same message was recorded before: nothing changed now.
    already_recorded: bool


@dataclass(frozen=True)
class UnmergeRecorded:
    event_id: int
    merge_event_id: int
    restored_links: int
    already_undone: bool


@dataclass(frozen=True)
class LinkRecorded:
    event_id: int
    kind: IdentityEventKind
    enterprise_id: str
    changed_links: int
    already_recorded: bool


@dataclass(frozen=True)
class LinkedIdentifier:
    identifier: SourceIdentifier
    status: IdentifierStatus
    link_id: int


@dataclass(frozen=True)
class IdentityHistoryEntry:
    event_id: int
    kind: IdentityEventKind
    recorded_at: datetime
    actor: str
    reason: str
    trigger_event: str
    exchange: str | None
    enterprise_id: str
    undoes_event: int | None
    flagged_for_review: bool
    changes: list[dict[str, Any]]


def ensure_patient_index_schema(connection: Connection) -> None:
    """Create the index's tables if missing and (re)install the triggers that keep their
    rows: nothing deleted, events never edited, a link's identifier never rewritten."""
    _lock_index(connection)
    SQLModel.metadata.create_all(connection, tables=_TABLES)
    install_keep_rows_guard(connection, "enterprise_identity")
    install_keep_rows_guard(connection, "identity_event")
    install_keep_rows_guard(
        connection,
        "patient_identifier_link",
        frozen_columns=["id", "lookup", "sealed_identifier", "created_at"],
    )
    connection.commit()


def _lock_index(connection: Connection) -> None:
    """The index's write lock; must be the first statement of the transaction.

    Merges are rare and short, so one lock for the whole index is simpler than row locks
    and rules out two merges moving the same links at once.
    """
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_INDEX_LOCK}
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _new_enterprise_id() -> str:
    # Random, not derived from any identifier: it names a person and must reveal nothing.
    return f"ent-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class _Request:
    """Who asked for a change, why, and through which message and exchange."""

    actor: str
    reason: str
    message: MessageRef | None
    trigger_event: str
    exchange: str | None


@dataclass(frozen=True)
class _Change:
    link: int
    enterprise_before: str
    enterprise_after: str
    status_before: str
    status_after: str

    def as_json(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "enterprise_before": self.enterprise_before,
            "enterprise_after": self.enterprise_after,
            "status_before": self.status_before,
            "status_after": self.status_after,
        }


class PatientIndex:
    """Enterprise ids and the source identifiers linked to them, with their history.

    ``pseudonym_key`` is the key workflow ids are made with (Settings.resolved_pseudonym_key);
    ``key_ring`` the payload key ring that seals identifiers and reasons.
    """

    def __init__(self, engine: Engine, key_ring: KeyRing, pseudonym_key: bytes) -> None:
        if not pseudonym_key:
            raise ValueError("the patient index needs the pseudonym key")
        self._engine = engine
        self._key_ring = key_ring
        self._pseudonym_key = pseudonym_key
        with engine.connect() as connection:
            ensure_patient_index_schema(connection)

    # -- pseudonyms and sealing ---------------------------------------------------------

    def lookup_of(self, identifier: SourceIdentifier) -> str:
        return pseudonym(
            self._pseudonym_key,
            "mpi-identifier",
            identifier.assigning_authority.strip(),
            identifier.identifier_type.strip(),
            identifier.value.strip(),
        )

    def message_pseudonym(self, message: MessageRef) -> str:
        return pseudonym(
            self._pseudonym_key,
            "mpi-message",
            message.sending_facility.strip(),
            message.control_id.strip(),
        )

    def _sealed_identifier(self, identifier: SourceIdentifier) -> bytes:
        return self._key_ring.seal(identifier.model_dump_json().encode(), column=_IDENTIFIER_COLUMN)

    def _opened_identifier(self, sealed: bytes) -> SourceIdentifier:
        plain = self._key_ring.unseal(sealed, column=_IDENTIFIER_COLUMN)
        return SourceIdentifier.model_validate_json(plain)

    # -- reads ----------------------------------------------------------------------------

    def resolve(self, identifier: SourceIdentifier) -> str | None:
        """The enterprise id the identifier is linked to, or None if the index never saw it."""
        with Session(self._engine) as session:
            link = self._link(session, identifier)
            return link.enterprise_id if link else None

    def linked_identifiers(self, enterprise_id: str) -> list[LinkedIdentifier]:
        """Every identifier linked to the enterprise id now, retired ones included, opened."""
        with Session(self._engine) as session:
            rows = session.exec(
                select(PatientIdentifierLink)
                .where(PatientIdentifierLink.enterprise_id == enterprise_id)
                .order_by(col(PatientIdentifierLink.id))
            ).all()
            return [
                LinkedIdentifier(
                    identifier=self._opened_identifier(row.sealed_identifier),
                    status=IdentifierStatus(row.status),
                    link_id=self._id(row),
                )
                for row in rows
            ]

    def history(self, identifier: SourceIdentifier) -> list[IdentityHistoryEntry]:
        """Every event that touched the identifier's link, oldest first, reasons opened."""
        with Session(self._engine) as session:
            link = self._link(session, identifier)
            if link is None:
                return []
            link_id = self._id(link)
            events = session.exec(select(IdentityEvent).order_by(col(IdentityEvent.id))).all()
            return [
                self._history_entry(event)
                for event in events
                if link_id in (event.subject_link, event.other_link)
                or any(change["link"] == link_id for change in json.loads(event.changes))
            ]

    def event(self, event_id: int) -> IdentityHistoryEntry | None:
        with Session(self._engine) as session:
            event = session.get(IdentityEvent, event_id)
            return self._history_entry(event) if event else None

    def _history_entry(self, event: IdentityEvent) -> IdentityHistoryEntry:
        return IdentityHistoryEntry(
            event_id=self._id(event),
            kind=IdentityEventKind(event.kind),
            recorded_at=event.recorded_at,
            actor=event.actor,
            reason=self._key_ring.unseal(event.sealed_reason, column=_REASON_COLUMN).decode(),
            trigger_event=event.trigger_event,
            exchange=event.exchange,
            enterprise_id=event.enterprise_id,
            undoes_event=event.undoes_event,
            flagged_for_review=event.flagged_for_review,
            changes=json.loads(event.changes),
        )

    # -- changes --------------------------------------------------------------------------

    def ensure_identity(
        self,
        identifier: SourceIdentifier,
        *,
        actor: str,
        reason: str,
        message: MessageRef | None = None,
        trigger_event: str = "",
        exchange: str | None = None,
    ) -> IdentityResolution:
        """The identifier's enterprise id; a first sight enrols it under a new one."""
        with Session(self._engine) as session:
            _lock_index(session.connection())
            link, enrolled = self._ensure_link(
                session, identifier, _Request(actor, reason, message, trigger_event, exchange)
            )
            session.commit()
            return IdentityResolution(link.enterprise_id, self._id(link), enrolled)

    def record_merge(
        self,
        survivor: SourceIdentifier,
        retired: SourceIdentifier,
        *,
        actor: str,
        reason: str,
        message: MessageRef,
        trigger_event: str = "A40",
        exchange: str | None = None,
    ) -> MergeRecorded:
        """Retire ``retired`` (MRG-1) into ``survivor`` (PID-3): it and every identifier
        linked with it move to the survivor's enterprise id.

        An identifier the index never saw is enrolled first; an unknown retired identifier
        flags the merge for review. The same merge from the same message again changes
        nothing and says so (``already_recorded``).
        """
        survivor_lookup, retired_lookup = self.lookup_of(survivor), self.lookup_of(retired)
        if survivor_lookup == retired_lookup:
            raise IdentityChangeRefused("a merge names the same identifier as survivor and retired")
        message_key = self.message_pseudonym(message)
        key = f"merge/{message_key}/{survivor_lookup}/{retired_lookup}"
        with Session(self._engine) as session:
            _lock_index(session.connection())
            earlier = self._event_by_key(session, key)
            if earlier is not None:
                return self._merge_recorded(session, earlier, already_recorded=True)
            enrol = _Request(actor, reason, message, trigger_event, exchange)
            survivor_link, survivor_new = self._ensure_link(session, survivor, enrol)
            retired_link, retired_new = self._ensure_link(session, retired, enrol)
            target = survivor_link.enterprise_id
            moving = self._links_of(session, retired_link.enterprise_id)
            changes = [
                self._move(
                    link,
                    enterprise_id=target,
                    status=IdentifierStatus.RETIRED if link.id == retired_link.id else None,
                )
                for link in moving
            ]
            event = self._append_event(
                session,
                kind=IdentityEventKind.MERGE,
                actor=actor,
                reason=reason,
                message_key=message_key,
                trigger_event=trigger_event,
                exchange=exchange,
                idempotency_key=key,
                subject_link=self._id(retired_link),
                other_link=self._id(survivor_link),
                enterprise_id=target,
                flagged_for_review=retired_new,
                changes=[change for change in changes if change is not None],
            )
            for link in moving:
                session.add(link)
            session.commit()
            return self._merge_recorded(
                session, event, already_recorded=False, survivor_was_unknown=survivor_new
            )

    def undo_merge(
        self, merge_event_id: int, *, actor: str, reason: str, exchange: str | None = None
    ) -> UnmergeRecorded:
        """Put back exactly the links a merge changed (enterprise id and status of each).

        Refused when a later change moved one of those links again: undoing then would
        silently undo that change too, which is for a person to sort out. Undoing an
        undone merge again changes nothing (``already_undone``).
        """
        key = f"unmerge/{merge_event_id}"
        with Session(self._engine) as session:
            _lock_index(session.connection())
            earlier = self._event_by_key(session, key)
            if earlier is not None:
                return UnmergeRecorded(
                    self._id(earlier),
                    merge_event_id,
                    len(json.loads(earlier.changes)),
                    already_undone=True,
                )
            merge = session.get(IdentityEvent, merge_event_id)
            if merge is None or merge.kind != IdentityEventKind.MERGE.value:
                raise IdentityChangeRefused(f"identity event {merge_event_id} is not a merge")
            recorded = [_Change(**change) for change in json.loads(merge.changes)]
            links = {
                change.link: session.get(PatientIdentifierLink, change.link) for change in recorded
            }
            moved_since = [
                str(change.link)
                for change in recorded
                if (link := links[change.link]) is None
                or (link.enterprise_id, link.status)
                != (change.enterprise_after, change.status_after)
            ]
            if moved_since:
                raise IdentityChangeRefused(
                    f"merge {merge_event_id} cannot be undone exactly: link(s) "
                    f"{', '.join(moved_since)} changed after it; undo the later change first"
                )
            changes = []
            for change in recorded:
                link = links[change.link]
                assert link is not None
                link.enterprise_id, link.status = change.enterprise_before, change.status_before
                session.add(link)
                changes.append(
                    _Change(
                        change.link,
                        change.enterprise_after,
                        change.enterprise_before,
                        change.status_after,
                        change.status_before,
                    )
                )
            event = self._append_event(
                session,
                kind=IdentityEventKind.UNMERGE,
                actor=actor,
                reason=reason,
                message_key=None,
                trigger_event="",
                exchange=exchange,
                idempotency_key=key,
                subject_link=merge.subject_link,
                other_link=merge.other_link,
                enterprise_id=merge.enterprise_id,
                undoes_event=merge_event_id,
                changes=changes,
            )
            session.commit()
            return UnmergeRecorded(
                self._id(event), merge_event_id, len(changes), already_undone=False
            )

    def link(
        self,
        primary: SourceIdentifier,
        other: SourceIdentifier,
        *,
        actor: str,
        reason: str,
        message: MessageRef | None = None,
        trigger_event: str = "A24",
        exchange: str | None = None,
    ) -> LinkRecorded:
        """Declare two identifiers the same person, both staying in use (ADT^A24): the
        other's enterprise id's identifiers move to the primary's."""
        return self._link_or_unlink(
            IdentityEventKind.LINK, primary, other, actor, reason, message, trigger_event, exchange
        )

    def unlink(
        self,
        primary: SourceIdentifier,
        other: SourceIdentifier,
        *,
        actor: str,
        reason: str,
        message: MessageRef | None = None,
        trigger_event: str = "A37",
        exchange: str | None = None,
    ) -> LinkRecorded:
        """Take ``other`` out of ``primary``'s enterprise id into a new one of its own
        (ADT^A37); when they are not linked, the request is recorded and nothing moves."""
        return self._link_or_unlink(
            IdentityEventKind.UNLINK,
            primary,
            other,
            actor,
            reason,
            message,
            trigger_event,
            exchange,
        )

    def _link_or_unlink(
        self,
        kind: IdentityEventKind,
        primary: SourceIdentifier,
        other: SourceIdentifier,
        actor: str,
        reason: str,
        message: MessageRef | None,
        trigger_event: str,
        exchange: str | None,
    ) -> LinkRecorded:
        primary_lookup, other_lookup = self.lookup_of(primary), self.lookup_of(other)
        if primary_lookup == other_lookup:
            raise IdentityChangeRefused(f"a {kind.value} names the same identifier twice")
        message_key = self.message_pseudonym(message) if message else None
        key = f"{kind.value}/{message_key}/{primary_lookup}/{other_lookup}" if message_key else None
        with Session(self._engine) as session:
            _lock_index(session.connection())
            earlier = self._event_by_key(session, key) if key else None
            if earlier is not None:
                return LinkRecorded(
                    self._id(earlier),
                    kind,
                    earlier.enterprise_id,
                    len(json.loads(earlier.changes)),
                    already_recorded=True,
                )
            enrol = _Request(actor, reason, message, trigger_event, exchange)
            primary_link, _ = self._ensure_link(session, primary, enrol)
            other_link, _ = self._ensure_link(session, other, enrol)
            if kind is IdentityEventKind.LINK:
                enterprise_id = primary_link.enterprise_id
                moving = self._links_of(session, other_link.enterprise_id)
            elif other_link.enterprise_id == primary_link.enterprise_id:
                enterprise_id = self._add_enterprise(session)
                moving = [other_link]
            else:
                enterprise_id, moving = other_link.enterprise_id, []
            changes = [self._move(link, enterprise_id=enterprise_id) for link in moving]
            event = self._append_event(
                session,
                kind=kind,
                actor=actor,
                reason=reason,
                message_key=message_key,
                trigger_event=trigger_event,
                exchange=exchange,
                idempotency_key=key,
                subject_link=self._id(other_link),
                other_link=self._id(primary_link),
                enterprise_id=enterprise_id,
                changes=[change for change in changes if change is not None],
            )
            for link in moving:
                session.add(link)
            session.commit()
            return LinkRecorded(
                self._id(event),
                kind,
                enterprise_id,
                len(json.loads(event.changes)),
                already_recorded=False,
            )

    # -- inside a locked transaction ------------------------------------------------------

    def _link(self, session: Session, identifier: SourceIdentifier) -> PatientIdentifierLink | None:
        return session.exec(
            select(PatientIdentifierLink).where(
                PatientIdentifierLink.lookup == self.lookup_of(identifier)
            )
        ).first()

    @staticmethod
    def _links_of(session: Session, enterprise_id: str) -> list[PatientIdentifierLink]:
        return list(
            session.exec(
                select(PatientIdentifierLink)
                .where(PatientIdentifierLink.enterprise_id == enterprise_id)
                .order_by(col(PatientIdentifierLink.id))
            ).all()
        )

    @staticmethod
    def _event_by_key(session: Session, key: str) -> IdentityEvent | None:
        return session.exec(
            select(IdentityEvent).where(IdentityEvent.idempotency_key == key)
        ).first()

    @staticmethod
    def _add_enterprise(session: Session) -> str:
        enterprise_id = _new_enterprise_id()
        session.add(EnterpriseIdentity(enterprise_id=enterprise_id, created_at=_now()))
        session.flush()
        return enterprise_id

    def _ensure_link(
        self,
        session: Session,
        identifier: SourceIdentifier,
        request: _Request,
    ) -> tuple[PatientIdentifierLink, bool]:
        found = self._link(session, identifier)
        if found is not None:
            return found, False
        if not identifier.value.strip() or not identifier.assigning_authority.strip():
            raise IdentityChangeRefused(
                "an identifier needs its id (CX-1) and assigning authority (CX-4 or the facility)"
            )
        enterprise_id = self._add_enterprise(session)
        link = PatientIdentifierLink(
            lookup=self.lookup_of(identifier),
            sealed_identifier=self._sealed_identifier(identifier),
            enterprise_id=enterprise_id,
            status=IdentifierStatus.ACTIVE.value,
            created_at=_now(),
        )
        session.add(link)
        session.flush()
        self._append_event(
            session,
            kind=IdentityEventKind.ENROL,
            actor=request.actor,
            reason=request.reason,
            message_key=self.message_pseudonym(request.message) if request.message else None,
            trigger_event=request.trigger_event,
            exchange=request.exchange,
            idempotency_key=f"enrol/{link.lookup}",
            subject_link=self._id(link),
            other_link=None,
            enterprise_id=enterprise_id,
            changes=[],
        )
        return link, True

    @staticmethod
    def _move(
        link: PatientIdentifierLink,
        *,
        enterprise_id: str,
        status: IdentifierStatus | None = None,
    ) -> _Change | None:
        """Point the link elsewhere (and set its status); the change, or None if none."""
        after_status = status.value if status else link.status
        if (link.enterprise_id, link.status) == (enterprise_id, after_status):
            return None
        change = _Change(
            PatientIndex._id(link), link.enterprise_id, enterprise_id, link.status, after_status
        )
        link.enterprise_id, link.status = enterprise_id, after_status
        return change

    def _append_event(
        self,
        session: Session,
        *,
        kind: IdentityEventKind,
        actor: str,
        reason: str,
        message_key: str | None,
        trigger_event: str,
        exchange: str | None,
        idempotency_key: str | None,
        subject_link: int,
        other_link: int | None,
        enterprise_id: str,
        changes: Sequence[_Change],
        undoes_event: int | None = None,
        flagged_for_review: bool = False,
    ) -> IdentityEvent:
        event = IdentityEvent(
            recorded_at=_now(),
            kind=kind.value,
            actor=actor,
            sealed_reason=self._key_ring.seal(reason.encode(), column=_REASON_COLUMN),
            trigger_event=trigger_event,
            message=message_key,
            exchange=exchange,
            idempotency_key=idempotency_key,
            subject_link=subject_link,
            other_link=other_link,
            enterprise_id=enterprise_id,
            undoes_event=undoes_event,
            flagged_for_review=flagged_for_review,
            changes=json.dumps([change.as_json() for change in changes]),
        )
        session.add(event)
        session.flush()
        return event

    def _merge_recorded(
        self,
        session: Session,
        event: IdentityEvent,
        *,
        already_recorded: bool,
        survivor_was_unknown: bool | None = None,
    ) -> MergeRecorded:
        if survivor_was_unknown is None:
            survivor_was_unknown = self._enrolled_by_same_message(session, event, event.other_link)
        return MergeRecorded(
            event_id=self._id(event),
            enterprise_id=event.enterprise_id,
            retired_was_unknown=event.flagged_for_review,
            survivor_was_unknown=survivor_was_unknown,
            flag_for_review=event.flagged_for_review,
            changed_links=len(json.loads(event.changes)),
            already_recorded=already_recorded,
        )

    @staticmethod
    def _enrolled_by_same_message(
        session: Session, event: IdentityEvent, link_id: int | None
    ) -> bool:
        enrol = session.exec(
            select(IdentityEvent).where(
                IdentityEvent.kind == IdentityEventKind.ENROL.value,
                IdentityEvent.subject_link == link_id,
            )
        ).first()
        return enrol is not None and enrol.message is not None and enrol.message == event.message

    @staticmethod
    def _id(row: PatientIdentifierLink | IdentityEvent) -> int:
        assert row.id is not None, "row not flushed"
        return row.id
