"""The audit trail on a real SQLite file and a real PostgreSQL database: the chain
verifies, the database refuses UPDATE and DELETE, every way of tampering with it (edit,
delete, reorder) is reported at the row where the chain breaks, and writers appending at
once keep one chain."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError

from adapters.audit_log import (
    GENESIS_HASH,
    AuditLog,
    GroupCommit,
    chain_hash,
    to_fhir_audit_event,
)
from adapters.database import CareweaveStore, open_engine
from adapters.payload_crypto import new_key_line, parse_key_ring
from models.audit import (
    ActorKind,
    AuditAction,
    AuditAnchor,
    AuditEntry,
    AuditOutcome,
    BreakKind,
)
from models.records import MessageReceipt, QuarantinedMessage
from tests.support.postgres import PostgresServer


def entry(number: int, **overrides: object) -> AuditEntry:
    values: dict[str, object] = {
        "actor_kind": ActorKind.SERVICE,
        "actor": "careweave-worker",
        "action": AuditAction.PUSH,
        "outcome": AuditOutcome.SUCCESS,
        "exchange": f"order-to-result/GENHOSP/PO{number}",
        "resource": "publish_lab_result",
        "detail": f"attempt {number}",
    }
    values.update(overrides)
    return AuditEntry.model_validate(values)


@pytest.fixture
def database(database_url: str) -> str:
    """An empty database, SQLite and PostgreSQL in turn (tests/conftest.py)."""
    return database_url


def audit_log(database: str) -> AuditLog:
    return AuditLog(open_engine(database))


def filled(database: str, rows: int = 5) -> AuditLog:
    log = audit_log(database)
    for number in range(1, rows + 1):
        log.append(entry(number))
    return log


_DROP_GUARD = {
    "sqlite": [
        "DROP TRIGGER IF EXISTS audit_event_no_update",
        "DROP TRIGGER IF EXISTS audit_event_no_delete",
    ],
    "postgresql": ["DROP TRIGGER IF EXISTS audit_event_append_only ON audit_event"],
}


def plain_client(database: str) -> Engine:
    """A client without Careweave's code (nothing reinstalls the guard), as the sqlite3
    shell or psql would be."""
    return create_engine(database)


def tamper(database: str, *statements: str) -> None:
    """What someone with the database's owner rights could do: drop the guard, then change
    rows."""
    client = plain_client(database)
    try:
        with client.begin() as connection:
            for statement in [*_DROP_GUARD[client.dialect.name], *statements]:
                connection.exec_driver_sql(statement)
    finally:
        client.dispose()


def assert_refused(database: str, statement: str) -> None:
    client = plain_client(database)
    try:
        with pytest.raises(DatabaseError, match="append-only"), client.begin() as connection:
            connection.exec_driver_sql(statement)
    finally:
        client.dispose()


def test_appended_rows_form_a_chain_that_verifies(database: str) -> None:
    log = filled(database)
    records = log.records()
    assert [record.seq for record in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    verification = log.verify()
    assert verification.ok
    assert verification.rows_checked == 5
    assert verification.last_seq == 5
    assert verification.last_hash == records[-1].hash


def test_an_empty_trail_verifies(database: str) -> None:
    verification = audit_log(database).verify()
    assert verification.ok
    assert verification.rows_checked == 0


def test_verify_catches_an_edited_row(database: str) -> None:
    log = filled(database)
    tamper(database, "UPDATE audit_event SET outcome = 'failure' WHERE seq = 3")
    verification = log.verify()
    assert not verification.ok
    assert verification.first_break is not None
    assert verification.first_break.seq == 3
    assert verification.first_break.kind is BreakKind.EDITED
    assert verification.rows_checked == 2


def test_verify_catches_an_edit_whose_hash_was_recomputed(database: str) -> None:
    """A forger who rewrites a row and its hash breaks the next row's link instead."""
    log = filled(database)
    edited = log.records()[1].model_copy(update={"outcome": "failure"})
    forged_hash = chain_hash(
        seq=edited.seq,
        recorded_at=edited.recorded_at,
        actor_kind=edited.actor_kind,
        actor=edited.actor,
        action=edited.action,
        outcome=edited.outcome,
        exchange=edited.exchange,
        resource=edited.resource,
        detail=edited.detail,
        prev_hash=edited.prev_hash,
    )
    tamper(
        database,
        f"UPDATE audit_event SET outcome = 'failure', hash = '{forged_hash}' WHERE seq = 2",
    )
    verification = log.verify()
    assert verification.first_break is not None
    assert verification.first_break.seq == 3
    assert verification.first_break.kind is BreakKind.RELINKED
    assert verification.rows_checked == 2


def _anchor_after(log: AuditLog) -> AuditAnchor:
    verification = log.verify()
    assert verification.last_seq is not None and verification.last_hash is not None
    return AuditAnchor(seq=verification.last_seq, hash=verification.last_hash)


def test_an_anchor_catches_rows_cut_from_the_end(database: str) -> None:
    """Deleting the newest rows leaves an intact, shorter chain: only an anchor notices."""
    log = filled(database)
    anchor = _anchor_after(log)
    assert log.verify(anchor).ok
    tamper(database, "DELETE FROM audit_event WHERE seq >= 4")
    assert log.verify().first_break is None  # the chain alone cannot tell
    verification = log.verify(anchor)
    assert verification.first_break is not None
    assert verification.first_break.kind is BreakKind.TRUNCATED
    assert verification.first_break.seq == 5
    assert "ends at seq 3" in verification.first_break.reason


def test_an_anchor_catches_a_chain_rebuilt_after_an_edit(database: str) -> None:
    """Edit row 2, then recompute every hash from there: the chain verifies, the anchor
    does not."""
    log = filled(database)
    anchor = _anchor_after(log)
    records = log.records()
    prev_hash = records[0].hash
    statements = []
    for record in records[1:]:
        outcome = "failure" if record.seq == 2 else record.outcome
        digest = chain_hash(
            seq=record.seq,
            recorded_at=record.recorded_at,
            actor_kind=record.actor_kind,
            actor=record.actor,
            action=record.action,
            outcome=outcome,
            exchange=record.exchange,
            resource=record.resource,
            detail=record.detail,
            prev_hash=prev_hash,
        )
        statements.append(
            f"UPDATE audit_event SET outcome = '{outcome}', prev_hash = '{prev_hash}', "
            f"hash = '{digest}' WHERE seq = {record.seq}"
        )
        prev_hash = digest
    tamper(database, *statements)
    assert log.verify().first_break is None  # rebuilt consistently
    verification = log.verify(anchor)
    assert verification.first_break is not None
    assert verification.first_break.kind is BreakKind.REWRITTEN
    assert verification.first_break.seq == 5


def test_anchor_text_is_checked() -> None:
    assert str(AuditAnchor.parse(f"12:{'A' * 64}")) == f"12:{'a' * 64}"
    for bad in ("12", "x:" + "a" * 64, "12:abc"):
        with pytest.raises(ValueError):
            AuditAnchor.parse(bad)


def test_verify_catches_a_deleted_row(database: str) -> None:
    log = filled(database)
    tamper(database, "DELETE FROM audit_event WHERE seq = 3")
    verification = log.verify()
    assert verification.first_break is not None
    assert verification.first_break.seq == 4
    assert verification.first_break.kind is BreakKind.MISSING
    assert "3 deleted" in verification.first_break.reason


def test_verify_catches_two_rows_swapped(database: str) -> None:
    log = filled(database)
    tamper(
        database,
        "UPDATE audit_event SET seq = -1 WHERE seq = 2",
        "UPDATE audit_event SET seq = 2 WHERE seq = 3",
        "UPDATE audit_event SET seq = 3 WHERE seq = -1",
    )
    verification = log.verify()
    assert verification.first_break is not None
    assert verification.first_break.seq == 2
    assert verification.first_break.kind is BreakKind.RELINKED


def test_verify_catches_a_row_renumbered_into_a_gap(database: str) -> None:
    log = filled(database)
    tamper(
        database,
        "DELETE FROM audit_event WHERE seq = 2",
        "UPDATE audit_event SET seq = seq - 1 WHERE seq > 2",
    )
    verification = log.verify()
    assert verification.first_break is not None
    assert verification.first_break.seq == 2
    assert verification.first_break.kind is BreakKind.RELINKED


def test_the_database_refuses_update_and_delete(database: str) -> None:
    filled(database, rows=2)
    assert_refused(database, "UPDATE audit_event SET actor = 'someone' WHERE seq = 1")
    assert_refused(database, "DELETE FROM audit_event")
    assert audit_log(database).verify().rows_checked == 2


def test_opening_the_database_restores_a_dropped_guard(database: str) -> None:
    filled(database, rows=1)
    tamper(database)
    audit_log(database)
    assert_refused(database, "DELETE FROM audit_event")


def test_records_filter_by_exchange_and_limit(database: str) -> None:
    log = filled(database)
    [only] = log.records(exchange="order-to-result/GENHOSP/PO4")
    assert only.seq == 4
    assert [record.seq for record in log.records(limit=2, newest_first=True)] == [5, 4]


def test_quarantine_and_its_receive_row_share_one_transaction(database: str) -> None:
    keys = parse_key_ring(new_key_line("k1"), source="test")
    store = CareweaveStore.from_url(database, keys)
    message_id = store.quarantine(
        QuarantinedMessage(
            received_at=datetime.now(UTC),
            peer="127.0.0.1:5000",
            ack_code="AR",
            error_code="100",
            reason="no MSH",
            raw=b"garbage",
        ),
        audit=entry(
            1,
            actor_kind=ActorKind.PARTNER,
            actor="127.0.0.1:5000",
            action=AuditAction.RECEIVE,
            outcome=AuditOutcome.REFUSED,
            exchange=None,
        ),
    )
    [record] = store.audit_log().records()
    assert record.resource == f"QuarantinedMessage/{message_id}"
    assert record.outcome == "refused"


def test_export_is_a_valid_r4_audit_event(database: str) -> None:
    log = filled(database, rows=1)
    log.append(
        entry(
            2,
            actor_kind=ActorKind.USER,
            actor="jdoe",
            action=AuditAction.REVIEW_DECISION,
            outcome=AuditOutcome.REFUSED,
            resource=None,
            detail="",
        )
    )
    first, second = (to_fhir_audit_event(record) for record in log.records())
    for event in (first, second):
        AuditEvent.model_validate(event)  # raises on anything R4 does not allow
    assert first["type"]["code"] == "110106"  # DICOM Export
    assert first["action"] == "R"
    assert first["outcome"] == "0"
    assert first["recorded"].endswith("Z")
    assert first["agent"][0]["who"]["identifier"]["value"] == "careweave-worker"
    assert first["agent"][0]["requestor"] is True
    assert first["source"]["observer"]["display"] == "Careweave"
    exchange, resource, chain = first["entity"]
    assert exchange["what"]["identifier"]["value"] == "order-to-result/GENHOSP/PO1"
    assert resource["what"]["identifier"]["value"] == "publish_lab_result"
    assert chain["detail"][0] == {"type": "hash", "valueString": log.records()[0].hash}
    assert second["action"] == "U"
    assert second["outcome"] == "4"
    assert len(second["entity"]) == 2  # no resource named: exchange and the chain only


def _append_many(database: str, worker: int, rows: int) -> None:
    log = AuditLog(open_engine(database))
    for number in range(rows):
        log.append(entry(worker * 1000 + number, actor=f"worker-{worker}"))


def test_processes_appending_at_once_keep_one_chain(database: str) -> None:
    audit_log(database)  # create the table before the race
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_append_many, args=(database, worker, 25)) for worker in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    log = audit_log(database)
    verification = log.verify()
    assert verification.ok, verification.first_break
    assert verification.rows_checked == 75
    by_actor = Counter(record.actor for record in log.records())
    assert by_actor == {f"worker-{worker}": 25 for worker in range(3)}


def _writer_thread(store: CareweaveStore, worker: int, rows: int) -> None:
    """One writer as a Careweave process writes: plain appends (worker), RECEIVE rows with
    their receipts (gateway) and quarantined messages with their row (refusals)."""
    receipts = store.receipt_book()
    log = store.audit_log()
    actor = f"writer-{worker}"
    try:
        for number in range(rows):
            kind = number % 3
            if kind == 0:
                log.append(entry(number, actor=actor))
            elif kind == 1:
                receipts.record(
                    [
                        MessageReceipt(
                            sending_facility="GENHOSP",
                            control_id=f"{worker}-{number}",
                            workflow_id=f"order-to-result/GENHOSP/{worker}-{number}",
                            message_type="ORM^O01",
                            received_at=datetime.now(UTC),
                        )
                    ],
                    [entry(number, actor=actor, action=AuditAction.RECEIVE)],
                )
            else:
                store.quarantine(
                    QuarantinedMessage(
                        received_at=datetime.now(UTC),
                        peer="127.0.0.1:5000",
                        ack_code="AR",
                        error_code="100",
                        reason="no MSH",
                        raw=b"garbage",
                    ),
                    audit=entry(number, actor=actor, action=AuditAction.RECEIVE),
                )
    finally:
        receipts.close()


def test_threads_writing_receipts_quarantine_and_audit_at_once_keep_one_chain(
    database: str,
) -> None:
    keys = parse_key_ring(new_key_line("k1"), source="test")
    store = CareweaveStore.from_url(database, keys)
    writers, rows = 4, 30
    threads = [
        threading.Thread(target=_writer_thread, args=(store, worker, rows))
        for worker in range(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()
    verification = store.audit_log().verify()
    assert verification.ok, verification.first_break
    assert verification.rows_checked == writers * rows
    by_actor = Counter(record.actor for record in store.audit_log().records())
    assert by_actor == {f"writer-{worker}": rows for worker in range(writers)}
    assert store.quarantine_count("held") == writers * (rows // 3)


def test_a_postgres_server_outside_utc_hands_back_times_that_still_verify(
    postgres: PostgresServer,
) -> None:
    """PostgreSQL returns timestamptz in the session's zone (a server set to local time, as
    hospitals' often are); the hash reads every time as UTC, so the chain still holds."""
    database = postgres.new_database()
    name = database.rsplit("/", 1)[1]
    admin = create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone TO 'Europe/Berlin'")
    finally:
        admin.dispose()
    log = filled(database, rows=3)
    [first, *_] = log.records()
    assert first.recorded_at.utcoffset() != timedelta(0)  # really handed back in Berlin time
    assert log.verify().first_break is None
    assert to_fhir_audit_event(first)["recorded"].endswith("Z")


class _CountingAuditLog(AuditLog):
    """The real log, counting its transactions; the first ``failing`` of them fail."""

    def __init__(self, database: str, failing: int = 0) -> None:
        super().__init__(open_engine(database))
        self.transactions: list[int] = []
        self._failing = failing

    def append_rows(self, entries: Sequence[AuditEntry]) -> None:
        self.transactions.append(len(entries))
        if len(self.transactions) <= self._failing:
            raise DatabaseError("INSERT", {}, Exception("disk full"))
        super().append_rows(entries)


async def test_group_commit_writes_every_callers_rows_in_shared_transactions(
    database: str,
) -> None:
    log = _CountingAuditLog(database)
    grouped = GroupCommit(log)
    callers = 120
    # Callers with one row and with two (a retry row before its outcome), all at once.
    await asyncio.gather(
        *(
            grouped.append_many([entry(n)] if n % 3 else [entry(n), entry(n, detail="again")])
            for n in range(callers)
        )
    )
    records = list(log.records())
    assert len(records) == callers + callers // 3
    assert log.verify().first_break is None
    assert sum(log.transactions) == len(records)
    # The callers that arrived while a transaction ran shared the next one.
    assert len(log.transactions) < callers / 4
    # A caller's rows are consecutive in the chain.
    for first, second in itertools.pairwise(records):
        if second.detail == "again":
            assert first.exchange == second.exchange


async def test_a_batch_that_failed_once_is_written_caller_by_caller(database: str) -> None:
    log = _CountingAuditLog(database, failing=1)
    grouped = GroupCommit(log)
    outcomes = await asyncio.gather(*(grouped.append_many([entry(n)]) for n in range(1, 4)))
    assert outcomes == [None] * 3
    assert log.transactions == [3, 1, 1, 1]
    assert [r.exchange.rsplit("PO", 1)[1] for r in log.records()] == ["1", "2", "3"]
    assert log.verify().first_break is None


async def test_a_failed_batch_is_retried_caller_by_caller(database: str) -> None:
    # The batch of five fails (the second transaction), then each caller alone: the first
    # of those fails too, the other four are written.
    log = _PoisonedAuditLog(database, poisoned_exchange="order-to-result/GENHOSP/PO3")
    grouped = GroupCommit(log)
    first = asyncio.ensure_future(grouped.append_many([entry(1)]))
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(grouped.append_many([entry(n)])) for n in range(2, 7)]
    outcomes = await asyncio.gather(first, *later, return_exceptions=True)
    assert [isinstance(o, DatabaseError) for o in outcomes] == [
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    assert [r.exchange.rsplit("PO", 1)[1] for r in log.records()] == ["1", "2", "4", "5", "6"]
    assert log.verify().first_break is None


class _PoisonedAuditLog(AuditLog):
    """The real log; a transaction holding one exchange's row fails."""

    def __init__(self, database: str, poisoned_exchange: str) -> None:
        super().__init__(open_engine(database))
        self._poisoned = poisoned_exchange

    def append_rows(self, entries: Sequence[AuditEntry]) -> None:
        if any(e.exchange == self._poisoned for e in entries):
            raise DatabaseError("INSERT", {}, Exception("value too long"))
        super().append_rows(entries)
