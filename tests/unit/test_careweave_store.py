"""Careweave's store on SQLite and PostgreSQL: receipts (a resend is found, a second insert
changes nothing, a receipt written through another connection is seen at once, as two
gateways on one database need), quarantine and release with their audit rows, and users."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.database import CareweaveStore
from adapters.payload_crypto import new_key_line, parse_key_ring
from adapters.users import UserDirectory
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.identity import Role
from models.records import MessageReceipt, QuarantinedMessage, QuarantineStatus

KEYS = parse_key_ring(new_key_line("k1"), source="test")


@pytest.fixture
def store(database_url: str) -> CareweaveStore:
    return CareweaveStore.from_url(database_url, KEYS)


def receipt(control_id: str, workflow_id: str) -> MessageReceipt:
    return MessageReceipt(
        sending_facility="GENHOSP",
        control_id=control_id,
        workflow_id=workflow_id,
        message_type="ORM^O01",
        received_at=datetime.now(UTC),
    )


def receive_row(outcome: AuditOutcome = AuditOutcome.SUCCESS) -> AuditEntry:
    return AuditEntry(
        actor_kind=ActorKind.PARTNER,
        actor="127.0.0.1:5000",
        action=AuditAction.RECEIVE,
        outcome=outcome,
    )


def test_a_receipt_is_kept_once_and_read_through_another_connection(
    store: CareweaveStore, database_url: str
) -> None:
    first_gateway = store.receipt_book()
    # Another process's book on the same database: its reader sees what the first wrote.
    second_gateway = CareweaveStore.from_url(database_url, KEYS).receipt_book()
    try:
        assert second_gateway.workflow_ids_for([("GENHOSP", "MSG1")]) == [None]
        first_gateway.record([receipt("MSG1", "exchange-a")], [receive_row()])
        assert second_gateway.workflow_ids_for([("GENHOSP", "MSG1"), ("GENHOSP", "MSG2")]) == [
            "exchange-a",
            None,
        ]
        # A resend recorded again (by either gateway) leaves the first receipt as it was.
        second_gateway.record([receipt("MSG1", "exchange-b")], [receive_row()])
        store.record_receipt(receipt("MSG1", "exchange-c"))
        kept = store.receipt("GENHOSP", "MSG1")
        assert kept is not None and kept.workflow_id == "exchange-a"
    finally:
        first_gateway.close()
        second_gateway.close()
    verification = store.audit_log().verify()
    assert verification.ok and verification.rows_checked == 2


def test_quarantine_and_release_write_their_audit_rows_in_the_same_transaction(
    store: CareweaveStore,
) -> None:
    message_id = store.quarantine(
        QuarantinedMessage(
            received_at=datetime.now(UTC),
            peer="127.0.0.1:5000",
            ack_code="AR",
            error_code="100",
            reason="MSH-9: no message type",
            raw=b"MSH|^~\\&|",
        ),
        audit=receive_row(AuditOutcome.REFUSED),
    )
    assert store.quarantine_count(QuarantineStatus.HELD.value) == 1
    store.mark_released(
        message_id,
        released_by="ops-1",
        result="AA",
        audit=AuditEntry(
            actor_kind=ActorKind.USER,
            actor="ops-1",
            action=AuditAction.RELEASE,
            outcome=AuditOutcome.SUCCESS,
            resource=f"QuarantinedMessage/{message_id}",
        ),
    )
    released = store.quarantined_message(message_id)
    assert released is not None
    assert released.status == QuarantineStatus.RELEASED.value
    assert released.raw == b"MSH|^~\\&|"
    assert released.released_at is not None and released.released_at.year >= 2025
    assert [row.action for row in store.audit_log().records()] == ["receive", "release"]
    assert store.audit_log().verify().ok
    with pytest.raises(KeyError):
        store.mark_released(message_id + 100, released_by="ops-1", result="AA")


def test_users_are_added_replaced_checked_and_removed(database_url: str) -> None:
    users = UserDirectory.from_url(database_url)
    users.add("rev-1", "first password", [Role.REVIEWER])
    users.add("rev-1", "second password", [Role.REVIEWER, Role.OPS])
    assert users.authenticate("rev-1", "first password") is None
    account = users.authenticate("rev-1", "second password")
    assert account is not None and account.role_set == {Role.REVIEWER, Role.OPS}
    assert [account.username for account in users.accounts()] == ["rev-1"]
    assert users.remove("rev-1") and not users.remove("rev-1")
    assert users.authenticate("rev-1", "second password") is None
