"""Careweave's own database: quarantine, receipts and the audit trail (SQLite default,
PostgreSQL in production)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import bindparam, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, create_engine, select

from adapters.audit_log import AuditLog, append_locked, install_append_only_guard, lock_chain
from models.audit import AuditEntry
from models.records import MessageReceipt, QuarantinedMessage, QuarantineStatus


def _enable_sqlite_wal(dbapi_connection: object, _record: object) -> None:
    # WAL lets the gateway write receipts while the CLI reads quarantine, and
    # synchronous=NORMAL keeps a receipt write well under a millisecond.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _enable_sqlite_wal)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    with engine.connect() as connection:
        # Workers and gateways start together: one at a time creates what is missing.
        lock_chain(connection)
        SQLModel.metadata.create_all(connection)
        install_append_only_guard(connection)
        connection.commit()
    return engine


class CareweaveStore:
    """Quarantine, receipts, audit; synchronous, so async callers use asyncio.to_thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def from_url(cls, url: str) -> CareweaveStore:
        return cls(open_engine(url))

    # -- quarantine --------------------------------------------------------

    def audit_log(self) -> AuditLog:
        return AuditLog(self._engine)

    def quarantine(self, message: QuarantinedMessage, *, audit: AuditEntry | None = None) -> int:
        """Keep the message; ``audit`` is appended in the same transaction, its resource
        set to ``QuarantinedMessage/<id>``."""
        with Session(self._engine) as session:
            if audit is not None:
                lock_chain(session.connection())
            session.add(message)
            session.flush()
            assert message.id is not None
            message_id = message.id
            if audit is not None:
                resource = f"QuarantinedMessage/{message_id}"
                append_locked(
                    session.connection(), [audit.model_copy(update={"resource": resource})]
                )
            session.commit()
            return message_id

    def quarantined(
        self, status: str | None = None, limit: int = 100
    ) -> Sequence[QuarantinedMessage]:
        with Session(self._engine) as session:
            query = select(QuarantinedMessage).order_by(col(QuarantinedMessage.id).desc())
            if status:
                query = query.where(QuarantinedMessage.status == status)
            return session.exec(query.limit(limit)).all()

    def quarantined_message(self, message_id: int) -> QuarantinedMessage | None:
        with Session(self._engine) as session:
            return session.get(QuarantinedMessage, message_id)

    def mark_released(
        self,
        message_id: int,
        *,
        released_by: str,
        result: str,
        audit: AuditEntry | None = None,
    ) -> None:
        """Mark it released; ``audit`` (the RELEASE row) is appended in the same transaction."""
        with Session(self._engine) as session:
            if audit is not None:
                lock_chain(session.connection())
            message = session.get(QuarantinedMessage, message_id)
            if message is None:
                raise KeyError(message_id)
            message.status = QuarantineStatus.RELEASED.value
            message.released_at = datetime.now(UTC)
            message.released_by = released_by
            message.release_result = result
            session.add(message)
            session.flush()
            if audit is not None:
                append_locked(session.connection(), [audit])
            session.commit()

    # -- receipts ------------------------------------------------------------

    def receipt(self, sending_facility: str, control_id: str) -> MessageReceipt | None:
        with Session(self._engine) as session:
            return session.get(MessageReceipt, (sending_facility, control_id))

    def record_receipt(self, receipt: MessageReceipt) -> None:
        with Session(self._engine) as session:
            if session.get(MessageReceipt, (receipt.sending_facility, receipt.control_id)):
                return
            session.add(receipt)
            session.commit()

    @property
    def is_sqlite(self) -> bool:
        return self._engine.dialect.name == "sqlite"

    def receipt_book(self) -> ReceiptBook:
        return ReceiptBook(self._engine)


class ReceiptBook:
    """The gateway's receipts, read and written through long-lived connections.

    Measured on the ingest path: a pooled ORM session per message cost ~1.5 ms of CPU,
    the same statements on a kept connection ~0.2 ms. One connection per direction,
    because reads and writes may run on different threads at the same time.
    """

    def __init__(self, engine: Engine) -> None:
        table = MessageReceipt.__table__  # type: ignore[attr-defined]
        self._lookup = select(table.c.workflow_id).where(
            table.c.sending_facility == bindparam("facility"),
            table.c.control_id == bindparam("control_id"),
        )
        insert = postgresql_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._insert = insert(table).on_conflict_do_nothing()
        self._reader = engine.connect()
        self._writer = engine.connect()

    def workflow_ids_for(self, keys: Sequence[tuple[str, str]]) -> list[str | None]:
        """For each (sending facility, control id): the exchange it went to, or None."""
        found: list[str | None] = []
        for facility, control_id in keys:
            row = self._reader.execute(
                self._lookup, {"facility": facility, "control_id": control_id}
            ).first()
            found.append(row[0] if row else None)
        # Ends the read transaction so the next lookup sees receipts written since.
        self._reader.rollback()
        return found

    def record(self, receipts: Sequence[MessageReceipt], audit: Sequence[AuditEntry] = ()) -> None:
        """Insert receipts and append their RECEIVE rows in one transaction (one commit
        per burst); a receipt already there is left as it was."""
        if not receipts and not audit:
            return
        try:
            if audit:
                lock_chain(self._writer)
            if receipts:
                self._writer.execute(self._insert, [receipt.model_dump() for receipt in receipts])
            append_locked(self._writer, audit)
            self._writer.commit()
        except BaseException:
            # The kept connection must not stay inside a failed transaction.
            self._writer.rollback()
            raise

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
