"""The append-only, hash-chained audit trail (HIPAA audit controls and integrity).

Each row's ``hash`` is SHA-256 over a canonical JSON of (seq, recorded_at, the entry's
fields, prev_hash); ``prev_hash`` is the hash of the row before it, and the first row's
is ``GENESIS_HASH``. Appends hold a chain-wide lock (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL ``pg_advisory_xact_lock``) while they read the tail and insert, so processes
appending at once never fork the chain; ``seq`` being the primary key is the backstop.
The database refuses UPDATE and DELETE on the table (triggers); ``verify`` catches
whoever goes around that: an edited row, a deleted one, rows reordered or inserted.

Not caught by the chain alone: removing rows from the end. Keep the last seq and hash
``verify`` printed somewhere else (a ticket, a log shipper) to catch that.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from models.audit import (
    ActorKind,
    AuditAction,
    AuditAnchor,
    AuditEntry,
    AuditOutcome,
    AuditVerification,
    BreakKind,
    ChainBreak,
)
from models.records import AuditRecord

GENESIS_HASH = "0" * 64
# Any fixed 64-bit number: the key of the chain's PostgreSQL advisory lock.
_POSTGRES_CHAIN_LOCK = 0x43574155444954  # "CWAUDIT"
_TABLE = AuditRecord.__table__  # type: ignore[attr-defined]

_SQLITE_GUARD = [
    f"""CREATE TRIGGER IF NOT EXISTS audit_event_no_{verb.lower()}
    BEFORE {verb} ON audit_event
    BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: {verb} refused'); END"""
    for verb in ("UPDATE", "DELETE")
]
_POSTGRES_GUARD = [
    # No "%" placeholder in the message: the driver would read it as a parameter.
    """CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING MESSAGE = 'audit_event is append-only: ' || TG_OP || ' refused';
    END $$""",
    "DROP TRIGGER IF EXISTS audit_event_append_only ON audit_event",
    """CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only()""",
]


def install_append_only_guard(connection: Connection) -> None:
    """Triggers that refuse UPDATE and DELETE; (re)installed every time the database opens,
    inside the caller's transaction, after ``lock_chain`` (processes start together)."""
    statements = {"sqlite": _SQLITE_GUARD, "postgresql": _POSTGRES_GUARD}.get(
        connection.dialect.name, []
    )
    for statement in statements:
        connection.exec_driver_sql(statement)


def install_keep_rows_guard(
    connection: Connection, table: str, *, frozen_columns: Sequence[str] | None = None
) -> None:
    """The same guard for another table whose rows are never deleted: DELETE refused, and
    UPDATE refused on ``frozen_columns`` (every column when None; a column left out of the
    list is state that may change, its history kept elsewhere). Same timing as
    ``install_append_only_guard``: every time the database opens, after ``lock_chain``."""
    dialect = connection.dialect.name
    update_of = f"UPDATE OF {', '.join(frozen_columns)}" if frozen_columns else "UPDATE"
    if dialect == "sqlite":
        statements = [
            f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{name}
            BEFORE {verb} ON {table}
            BEGIN SELECT RAISE(ABORT, '{table} keeps every row: {name.upper()} refused'); END"""
            for name, verb in (("delete", "DELETE"), ("update", update_of))
        ]
    elif dialect == "postgresql":
        statements = [
            f"""CREATE OR REPLACE FUNCTION {table}_keep_rows() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION USING MESSAGE = '{table} keeps every row: ' || TG_OP || ' refused';
            END $$""",
            f"DROP TRIGGER IF EXISTS {table}_keep_rows ON {table}",
            f"""CREATE TRIGGER {table}_keep_rows BEFORE {update_of} OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION {table}_keep_rows()""",
        ]
    else:
        statements = []
    for statement in statements:
        connection.exec_driver_sql(statement)


def _utc_text(moment: datetime) -> str:
    # SQLite hands back naive datetimes; every time Careweave records is UTC.
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat(timespec="microseconds").replace("+00:00", "Z")


def chain_hash(
    *,
    seq: int,
    recorded_at: datetime,
    actor_kind: str,
    actor: str,
    action: str,
    outcome: str,
    exchange: str | None,
    resource: str | None,
    detail: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over the canonical JSON of one row: sorted keys, no spaces, UTF-8."""
    canonical = json.dumps(
        {
            "seq": seq,
            "recorded_at": _utc_text(recorded_at),
            "actor_kind": actor_kind,
            "actor": actor,
            "action": action,
            "outcome": outcome,
            "exchange": exchange,
            "resource": resource,
            "detail": detail,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _row_hash(record: AuditRecord) -> str:
    return chain_hash(
        seq=record.seq,
        recorded_at=record.recorded_at,
        actor_kind=record.actor_kind,
        actor=record.actor,
        action=record.action,
        outcome=record.outcome,
        exchange=record.exchange,
        resource=record.resource,
        detail=record.detail,
        prev_hash=record.prev_hash,
    )


def lock_chain(connection: Connection) -> None:
    """Take the chain's write lock; must be the first statement of the transaction."""
    dialect = connection.dialect.name
    if dialect == "sqlite":
        # pysqlite would open a deferred transaction at the first INSERT, after the tail
        # was read; IMMEDIATE takes the write lock before the read.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif dialect == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_CHAIN_LOCK}
        )


_TAIL = select(_TABLE.c.seq, _TABLE.c.hash).order_by(_TABLE.c.seq.desc()).limit(1)


def append_locked(connection: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
    """Chain ``entries`` onto the tail inside the caller's transaction, after ``lock_chain``.

    The caller commits, so other writes (receipts, quarantine) share the round trip.
    """
    return [AuditRecord.model_validate(row) for row in _append_rows(connection, entries)]


def append_rows_locked(connection: Connection, entries: Sequence[AuditEntry]) -> None:
    """``append_locked`` for the gateway's hot path: no ORM objects are built for the rows
    (measured: building them was most of the ~0.9 ms a RECEIVE row added per message)."""
    _append_rows(connection, entries)


def _append_rows(connection: Connection, entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
    if not entries:
        return []
    tail = connection.execute(_TAIL).first()
    seq, prev_hash = (int(tail[0]), str(tail[1])) if tail else (0, GENESIS_HASH)
    recorded_at = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        seq += 1
        fields = entry.model_dump(mode="json")
        digest = chain_hash(seq=seq, recorded_at=recorded_at, prev_hash=prev_hash, **fields)
        rows.append(
            {
                "seq": seq,
                "recorded_at": recorded_at,
                "prev_hash": prev_hash,
                "hash": digest,
                **fields,
            }
        )
        prev_hash = digest
    connection.execute(_TABLE.insert(), rows)
    return rows


class AuditLog:
    """Append, list, verify and export the audit trail. Synchronous; ``aappend`` for async code."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def append(self, entry: AuditEntry) -> AuditRecord:
        return self.append_many([entry])[0]

    def append_many(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Several rows in one transaction, consecutive in the chain."""
        with self._engine.connect() as connection:
            lock_chain(connection)
            records = append_locked(connection, entries)
            connection.commit()
        return records

    async def aappend(self, entry: AuditEntry) -> AuditRecord:
        return await asyncio.to_thread(self.append, entry)

    async def aappend_many(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        return await asyncio.to_thread(self.append_many, entries)

    def append_rows(self, entries: Sequence[AuditEntry]) -> None:
        """``append_many`` without building the records (nobody reads them back)."""
        with self._engine.connect() as connection:
            lock_chain(connection)
            append_rows_locked(connection, entries)
            connection.commit()

    def records(
        self,
        *,
        limit: int | None = None,
        exchange: str | None = None,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        with Session(self._engine) as session:
            query = select(AuditRecord)
            if exchange is not None:
                query = query.where(AuditRecord.exchange == exchange)
            seq = col(AuditRecord.seq)
            query = query.order_by(seq.desc() if newest_first else seq)
            if limit is not None:
                query = query.limit(limit)
            return list(session.exec(query).all())

    def in_order(self, *, exchange: str | None = None) -> Iterator[AuditRecord]:
        """Every row (or one exchange's), oldest first, streamed: the trail can be long."""
        query = select(_TABLE).order_by(_TABLE.c.seq)
        if exchange is not None:
            query = query.where(_TABLE.c.exchange == exchange)
        with self._engine.connect() as connection:
            for row in connection.execution_options(yield_per=1000).execute(query):
                yield AuditRecord.model_validate(row._mapping)

    def verify(self, anchor: AuditAnchor | None = None) -> AuditVerification:
        """Walk the chain from genesis; report the first row whose link does not hold.

        With an ``anchor`` noted earlier, also report a chain that no longer reaches the
        anchored row (rows cut from the end) or holds it with another hash (rebuilt).
        """
        expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
        last: AuditRecord | None = None
        for record in self.in_order():
            broken = _first_break(record, expected_seq, prev_hash)
            if broken is None and anchor is not None and record.seq == anchor.seq:
                broken = _anchor_break(record, anchor)
            if broken is not None:
                return AuditVerification(rows_checked=checked, first_break=broken)
            checked += 1
            expected_seq, prev_hash, last = record.seq + 1, record.hash, record
        if anchor is not None and (last is None or last.seq < anchor.seq):
            return AuditVerification(
                rows_checked=checked,
                first_break=ChainBreak(
                    seq=anchor.seq,
                    kind=BreakKind.TRUNCATED,
                    reason=(
                        f"the anchored seq {anchor.seq} is gone: the trail ends at seq "
                        f"{last.seq if last else 0}, rows were cut from its end"
                    ),
                ),
            )
        return AuditVerification(
            rows_checked=checked,
            last_seq=last.seq if last else None,
            last_hash=last.hash if last else None,
        )


class GroupCommit:
    """Appends from many concurrent tasks of one event loop, committed together.

    Each caller still returns only once its rows are committed (a step is never done
    without its row), but the callers waiting while a transaction runs share the next
    one: under load one chain lock, one tail read and one commit serve a whole batch
    instead of one per caller. Rows keep the order the callers arrived in. When a batch's
    transaction fails, each caller's rows are tried alone: only the callers whose rows
    cannot be written fail.
    """

    def __init__(self, audit_log: AuditLog, *, max_entries: int = 500) -> None:
        self._audit_log = audit_log
        self._max_entries = max_entries
        self._waiting: list[tuple[list[AuditEntry], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def append_many(self, entries: Sequence[AuditEntry]) -> None:
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((list(entries), committed))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_while_waiting())
        await committed

    async def _write_while_waiting(self) -> None:
        try:
            while self._waiting:
                batch = self._next_batch()
                try:
                    await asyncio.to_thread(
                        self._audit_log.append_rows, [entry for rows, _ in batch for entry in rows]
                    )
                except Exception:
                    # One caller's rows may be what failed: each alone, so the others
                    # are not failed with it (and with it again on their retries).
                    for rows, committed in batch:
                        await self._write_alone(rows, committed)
                else:
                    for _, committed in batch:
                        if not committed.done():
                            committed.set_result(None)
        except asyncio.CancelledError as stopped:
            # The worker is stopping: nobody waits for a row that will not be written.
            for _, committed in self._waiting:
                if not committed.done():
                    committed.set_exception(stopped)
            self._waiting.clear()
            raise

    async def _write_alone(self, rows: list[AuditEntry], committed: asyncio.Future[None]) -> None:
        try:
            await asyncio.to_thread(self._audit_log.append_rows, rows)
        except Exception as error:
            if not committed.done():
                committed.set_exception(error)
        else:
            if not committed.done():
                committed.set_result(None)

    def _next_batch(self) -> list[tuple[list[AuditEntry], asyncio.Future[None]]]:
        taken, size = 0, 0
        for rows, _ in self._waiting:
            if taken and size + len(rows) > self._max_entries:
                break
            taken += 1
            size += len(rows)
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch


def _anchor_break(record: AuditRecord, anchor: AuditAnchor) -> ChainBreak | None:
    if record.hash == anchor.hash:
        return None
    reason = (
        f"seq {record.seq}: hash is not the anchored one: the chain was rebuilt up to here "
        "(every row recomputed) after the anchor was noted"
    )
    return ChainBreak(seq=record.seq, kind=BreakKind.REWRITTEN, reason=reason)


def _first_break(record: AuditRecord, expected_seq: int, prev_hash: str) -> ChainBreak | None:
    # Order matters: a missing seq or a wrong prev_hash says where rows went; only a row
    # in its place whose own hash fails was edited.
    if record.seq != expected_seq:
        missing = (
            f"{expected_seq}"
            if record.seq == expected_seq + 1
            else f"{expected_seq}..{record.seq - 1}"
        )
        if record.seq > expected_seq:
            reason = f"seq {record.seq} follows seq {expected_seq - 1}: row(s) {missing} deleted"
            return ChainBreak(seq=record.seq, kind=BreakKind.MISSING, reason=reason)
        reason = f"seq {record.seq} appears after seq {expected_seq - 1}: rows out of order"
        return ChainBreak(seq=record.seq, kind=BreakKind.RELINKED, reason=reason)
    if record.prev_hash != prev_hash:
        reason = (
            f"seq {record.seq}: prev_hash is not the hash of seq {record.seq - 1}: "
            "rows reordered, replaced or inserted"
        )
        return ChainBreak(seq=record.seq, kind=BreakKind.RELINKED, reason=reason)
    if _row_hash(record) != record.hash:
        reason = f"seq {record.seq}: hash does not match the row's content: row edited"
        return ChainBreak(seq=record.seq, kind=BreakKind.EDITED, reason=reason)
    return None


# -- FHIR AuditEvent (R4) -----------------------------------------------------------

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_CAREWEAVE_ACTIONS = "urn:careweave:audit-action"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"

# Event type from the DICOM audit vocabulary (DICOM PS3.15 A.5, used by FHIR's
# audit-event-type value set) and the create/read/update/execute code of DICOM's
# EventActionCode for that event.
_EVENT_TYPE: dict[AuditAction, tuple[str, str, str]] = {
    AuditAction.RECEIVE: ("110107", "Import", "C"),
    AuditAction.ACCESS: ("110110", "Patient Record", "R"),
    AuditAction.TRANSFORM: ("110110", "Patient Record", "E"),
    AuditAction.PUSH: ("110106", "Export", "R"),
    AuditAction.RETRY: ("110100", "Application Activity", "E"),
    AuditAction.EXCEPTION: ("110100", "Application Activity", "E"),
    AuditAction.REVIEW_DECISION: ("110110", "Patient Record", "U"),
    AuditAction.DECODE: ("110110", "Patient Record", "R"),
    AuditAction.RELEASE: ("110107", "Import", "C"),
    AuditAction.LOGIN: ("110114", "User Authentication", "E"),
    AuditAction.ACCOUNT: ("110137", "User Security Attributes Changed", "U"),
}
# AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure.
_OUTCOME = {AuditOutcome.SUCCESS: "0", AuditOutcome.REFUSED: "4", AuditOutcome.FAILURE: "8"}
_ROLE = {
    ActorKind.USER: ("humanuser", "human user"),
    ActorKind.SERVICE: ("dataprocessor", "data processor"),
    ActorKind.PARTNER: ("datacollector", "data collector"),
}


def _entity(system: str, value: str, type_code: str, type_display: str) -> dict[str, Any]:
    return {
        "what": {"identifier": {"system": system, "value": value}},
        "type": {"system": _ENTITY_TYPE, "code": type_code, "display": type_display},
    }


def to_fhir_audit_event(record: AuditRecord) -> dict[str, Any]:
    """An R4 AuditEvent for one row, validated with fhir.resources R4B.

    The row's seq, hash and prev_hash travel as details of an entity naming the audit
    row itself, so an exported trail can be re-verified outside Careweave.
    """
    action = AuditAction(record.action)
    type_code, type_display, action_code = _EVENT_TYPE[action]
    role_code, role_display = _ROLE[ActorKind(record.actor_kind)]
    entities = []
    if record.exchange:
        entities.append(_entity("urn:careweave:exchange", record.exchange, "2", "System Object"))
    if record.resource:
        entities.append(_entity("urn:careweave:resource", record.resource, "2", "System Object"))
    chain_entity = _entity("urn:careweave:audit-event", str(record.seq), "2", "System Object")
    chain_entity["detail"] = [
        {"type": "hash", "valueString": record.hash},
        {"type": "prev_hash", "valueString": record.prev_hash},
    ]
    entities.append(chain_entity)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"careweave-audit-{record.seq}",
        "type": {"system": _DCM, "code": type_code, "display": type_display},
        "subtype": [{"system": _CAREWEAVE_ACTIONS, "code": action.value}],
        "action": action_code,
        "recorded": _utc_text(record.recorded_at),
        "outcome": _OUTCOME[AuditOutcome(record.outcome)],
        "agent": [
            {
                "type": {
                    "coding": [{"system": _ROLE_TYPE, "code": role_code, "display": role_display}]
                },
                "who": {
                    "identifier": {
                        "system": f"urn:careweave:{record.actor_kind}",
                        "value": record.actor,
                    }
                },
                # The one agent recorded is the one who initiated the event.
                "requestor": True,
            }
        ],
        "source": {
            "observer": {"display": "Careweave"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": entities,
    }
    if record.detail:
        event["outcomeDesc"] = record.detail
    validated: dict[str, Any] = AuditEvent.model_validate(event).model_dump(
        mode="json", exclude_none=True
    )
    return validated
