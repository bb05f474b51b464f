"""The master patient index on a real SQLite file and a real PostgreSQL database: merge,
repeat, unknown identifiers, undo, A24/A37, and that the database itself refuses to lose a
row."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError

from adapters.database import open_engine
from adapters.patient_index import IdentityChangeRefused, PatientIndex
from adapters.payload_crypto import new_key_line, parse_key_ring
from models.patient_index import IdentifierStatus, IdentityEventKind, MessageRef, SourceIdentifier
from tests.support.database_dump import stored_bytes

SURVIVOR = SourceIdentifier(assigning_authority="GENHOSP", value="MRN-1001")
RETIRED = SourceIdentifier(assigning_authority="GENHOSP", value="MRN-2002")
LAB_ID = SourceIdentifier(assigning_authority="CITYLAB", value="L-77", identifier_type="PI")
A40 = MessageRef(sending_facility="GENHOSP", control_id="MSG-0001")
ROBOT = "service:careweave"


@pytest.fixture
def database(database_url: str) -> str:
    """An empty database, SQLite and PostgreSQL in turn (tests/conftest.py)."""
    return database_url


@pytest.fixture
def engine(database: str) -> Engine:
    return open_engine(database)


@pytest.fixture
def index(engine: Engine) -> PatientIndex:
    keys = parse_key_ring(new_key_line("k1"), source="test")
    return PatientIndex(engine, keys, pseudonym_key=b"test pseudonym key")


def enrolled(index: PatientIndex, identifier: SourceIdentifier) -> str:
    return index.ensure_identity(identifier, actor=ROBOT, reason="registered").enterprise_id


def merge(index: PatientIndex, message: MessageRef = A40) -> object:
    return index.record_merge(
        SURVIVOR, RETIRED, actor=ROBOT, reason="registration merged duplicates", message=message
    )


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("enterprise_identity", "patient_identifier_link", "identity_event")
        }


def test_ensure_identity_enrols_once_and_resolves_after(index: PatientIndex) -> None:
    first = index.ensure_identity(SURVIVOR, actor=ROBOT, reason="A28")
    again = index.ensure_identity(SURVIVOR, actor=ROBOT, reason="A31")
    assert first.enrolled and not again.enrolled
    assert again.enterprise_id == first.enterprise_id == index.resolve(SURVIVOR)
    assert index.resolve(RETIRED) is None
    # The type is part of the identifier: the same number as an account is someone else.
    assert index.resolve(SURVIVOR.model_copy(update={"identifier_type": "AN"})) is None


def test_merge_moves_the_retired_identifier_and_its_links_to_the_survivor(
    index: PatientIndex,
) -> None:
    survivor_enterprise = enrolled(index, SURVIVOR)
    retired_enterprise = enrolled(index, RETIRED)
    index.link(RETIRED, LAB_ID, actor=ROBOT, reason="A24 from the lab")
    assert index.resolve(LAB_ID) == retired_enterprise

    merged = index.record_merge(
        SURVIVOR, RETIRED, actor="reviewer:ana", reason="same patient", message=A40
    )

    assert merged.enterprise_id == survivor_enterprise
    assert not merged.retired_was_unknown and not merged.flag_for_review
    assert not merged.already_recorded
    assert merged.changed_links == 2
    assert index.resolve(RETIRED) == index.resolve(LAB_ID) == survivor_enterprise
    linked = {
        item.identifier: item.status for item in index.linked_identifiers(survivor_enterprise)
    }
    assert linked == {
        SURVIVOR: IdentifierStatus.ACTIVE,
        RETIRED: IdentifierStatus.RETIRED,
        LAB_ID: IdentifierStatus.ACTIVE,
    }
    event = index.event(merged.event_id)
    assert event is not None
    assert (event.kind, event.actor, event.reason) == (
        IdentityEventKind.MERGE,
        "reviewer:ana",
        "same patient",
    )
    assert event.trigger_event == "A40"


def test_the_same_merge_twice_changes_nothing_and_says_so(
    index: PatientIndex, engine: Engine
) -> None:
    enrolled(index, SURVIVOR)
    enrolled(index, RETIRED)
    first = index.record_merge(SURVIVOR, RETIRED, actor=ROBOT, reason="A40", message=A40)
    before = counts(engine)

    again = index.record_merge(SURVIVOR, RETIRED, actor=ROBOT, reason="A40 resent", message=A40)

    assert again.already_recorded and not first.already_recorded
    assert again.event_id == first.event_id
    assert again.enterprise_id == first.enterprise_id
    assert counts(engine) == before


def test_a_merge_naming_an_unknown_retired_identifier_creates_it_and_flags_review(
    index: PatientIndex,
) -> None:
    survivor_enterprise = enrolled(index, SURVIVOR)

    merged = merge(index)

    assert merged.retired_was_unknown and merged.flag_for_review
    assert not merged.survivor_was_unknown
    assert index.resolve(RETIRED) == survivor_enterprise
    history = index.history(RETIRED)
    assert [entry.kind for entry in history] == [IdentityEventKind.ENROL, IdentityEventKind.MERGE]
    # A resend of that message keeps the flag: the reviewer has not looked yet.
    assert merge(index).flag_for_review


def test_undo_restores_the_exact_links_and_keeps_both_events(
    index: PatientIndex, engine: Engine
) -> None:
    survivor_enterprise = enrolled(index, SURVIVOR)
    retired_enterprise = enrolled(index, RETIRED)
    index.link(RETIRED, LAB_ID, actor=ROBOT, reason="A24")
    before = {
        enterprise: sorted(
            (item.identifier.value, item.status) for item in index.linked_identifiers(enterprise)
        )
        for enterprise in (survivor_enterprise, retired_enterprise)
    }
    merged = merge(index)

    undone = index.undo_merge(merged.event_id, actor="reviewer:ana", reason="wrong patient")

    assert not undone.already_undone and undone.restored_links == 2
    after = {
        enterprise: sorted(
            (item.identifier.value, item.status) for item in index.linked_identifiers(enterprise)
        )
        for enterprise in (survivor_enterprise, retired_enterprise)
    }
    assert after == before
    assert [entry.kind for entry in index.history(RETIRED)][-2:] == [
        IdentityEventKind.MERGE,
        IdentityEventKind.UNMERGE,
    ]
    unmerge = index.event(undone.event_id)
    assert unmerge is not None and unmerge.undoes_event == merged.event_id
    rows = counts(engine)
    again = index.undo_merge(merged.event_id, actor="reviewer:ana", reason="clicked twice")
    assert again.already_undone and again.event_id == undone.event_id
    assert counts(engine) == rows


def test_undo_is_refused_when_a_later_change_moved_the_same_links(index: PatientIndex) -> None:
    enrolled(index, SURVIVOR)
    enrolled(index, RETIRED)
    merged = merge(index)
    index.record_merge(
        LAB_ID,
        SURVIVOR,
        actor=ROBOT,
        reason="a later merge",
        message=MessageRef(sending_facility="GENHOSP", control_id="MSG-0002"),
    )

    with pytest.raises(IdentityChangeRefused, match="changed after it"):
        index.undo_merge(merged.event_id, actor="reviewer:ana", reason="too late")


def test_a_merge_of_an_identifier_into_itself_is_refused(index: PatientIndex) -> None:
    with pytest.raises(IdentityChangeRefused, match="same identifier"):
        index.record_merge(SURVIVOR, SURVIVOR, actor=ROBOT, reason="bad A40", message=A40)


def test_a24_links_and_a37_unlinks_into_an_identity_of_its_own(index: PatientIndex) -> None:
    enterprise = enrolled(index, SURVIVOR)
    a24 = MessageRef(sending_facility="CITYLAB", control_id="L-1")

    linked = index.link(SURVIVOR, LAB_ID, actor=ROBOT, reason="A24", message=a24)
    repeated = index.link(SURVIVOR, LAB_ID, actor=ROBOT, reason="A24 resent", message=a24)
    assert index.resolve(LAB_ID) == enterprise == linked.enterprise_id
    assert repeated.already_recorded and repeated.event_id == linked.event_id

    unlinked = index.unlink(SURVIVOR, LAB_ID, actor=ROBOT, reason="A37")
    assert unlinked.changed_links == 1
    assert index.resolve(LAB_ID) == unlinked.enterprise_id != enterprise
    assert index.resolve(SURVIVOR) == enterprise
    assert [entry.kind for entry in index.history(LAB_ID)] == [
        IdentityEventKind.ENROL,
        IdentityEventKind.LINK,
        IdentityEventKind.UNLINK,
    ]


def test_identifiers_reasons_and_message_ids_are_not_stored_in_clear(
    index: PatientIndex, engine: Engine
) -> None:
    enrolled(index, SURVIVOR)
    index.record_merge(SURVIVOR, RETIRED, actor=ROBOT, reason="duplicate of Jane Roe", message=A40)
    stored = stored_bytes(engine)
    # The dump sees what is kept in clear (a status), so it would see an MRN too.
    assert IdentifierStatus.RETIRED.value.encode() in stored
    for clear in (b"MRN-1001", b"MRN-2002", b"MSG-0001", b"Jane Roe"):
        assert clear not in stored


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM identity_event",
        "DELETE FROM patient_identifier_link",
        "DELETE FROM enterprise_identity",
        "UPDATE identity_event SET actor = 'someone else'",
        "UPDATE patient_identifier_link SET lookup = 'another'",
        "UPDATE enterprise_identity SET enterprise_id = 'ent-x'",
    ],
)
def test_the_database_refuses_to_delete_or_rewrite_history(
    index: PatientIndex, engine: Engine, statement: str
) -> None:
    enrolled(index, SURVIVOR)
    merge(index)
    before = counts(engine)
    with pytest.raises(DatabaseError, match="keeps every row"), engine.begin() as connection:
        connection.execute(text(statement))
    assert counts(engine) == before


def test_the_guard_holds_for_a_plain_client_too(index: PatientIndex, database: str) -> None:
    # Someone with the sqlite3 shell or psql and no Careweave code is refused the same way.
    merge(index)
    plain_client = create_engine(database)
    try:
        with pytest.raises(DatabaseError, match="keeps every row"), plain_client.begin() as sql:
            sql.exec_driver_sql("DELETE FROM identity_event")
    finally:
        plain_client.dispose()
