"""A merge announcement as a delivery item: what an MLLP destination is sent for it (the
hl7apy-built A40 / A37, read back by our own reader), that an item carries exactly one
payload while a discharge item is sent as before, and which per-patient queue each
survivor's announcement joins."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from activities.merge_announcements import SurvivorQueueKeyInput, survivor_queue_key
from activities.ordered_delivery import outbound_message
from adapters.hl7v2.adt_messages import parse_adt_event
from adapters.hl7v2.header import decode_message
from adapters.hl7v2.merge_messages import parse_identity_message
from exchanges.sdk import RoutingContext, patient_pseudonym
from models.delivery import DeliveryItem
from models.destinations import DeliveryPolicy, Subscription
from models.merge import LinkMessage, MergeAnnouncement, MergeMessage
from workers import sample_messages as sm

WHEN = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
A40 = (
    f"MSH|^~\\&|ADT|{sm.HOSPITAL}|CW|CW|20261201090000||ADT^A40^ADT_A39|M-1|P|2.5.1\r"
    "EVN|A40|20261201090000\r"
    f"PID|1||MRN-S^^^{sm.HOSPITAL}^MR||Mergeton^Clara||19580721|F\r"
    f"MRG|MRN-R^^^{sm.HOSPITAL}^MR\r"
)
DISCHARGE = sm.adt_event(sm.SampleStay("V-1", patient=sm.SamplePatient(mrn="MRN-S")), "D-1", "A03")


def announcement(trigger: str) -> MergeAnnouncement:
    read = parse_identity_message(A40)
    assert isinstance(read, MergeMessage)
    return MergeAnnouncement.model_validate(
        {"trigger": trigger, "merge": read.merges[0], "message_time": WHEN, "operator_id": "OP1"}
    )


def item(**payload: object) -> DeliveryItem:
    return DeliveryItem.model_validate(
        {
            "event_id": "merge/k/H/M-1/0",
            "subscription": Subscription.PATIENT_MERGE,
            "exchange_id": "patient-merge/H/k",
            "mapping_version": "v1",
            "routing_version": "t-1",
            "policy": DeliveryPolicy(),
            **payload,
        }
    )


def test_an_a40_announcement_is_sent_as_an_a40_naming_survivor_and_retired() -> None:
    sent = outbound_message(item(announcement=announcement("A40")))
    read = parse_identity_message(sent)
    assert isinstance(read, MergeMessage)
    assert read.trigger.value == "A40"
    [merge] = read.merges
    assert merge.survivor.value == "MRN-S"
    assert merge.retired is not None and merge.retired.value == "MRN-R"
    assert read.operator_id == "OP1"
    # Built from the item alone: a resend is the same message.
    assert sent == outbound_message(item(announcement=announcement("A40")))


def test_an_a37_announcement_unlinks_the_two_records() -> None:
    read = parse_identity_message(outbound_message(item(announcement=announcement("A37"))))
    assert isinstance(read, LinkMessage)
    assert read.trigger.value == "A37"
    assert [i.value for i in read.first.identifiers] == ["MRN-S"]
    assert [i.value for i in read.second.identifiers] == ["MRN-R"]


def test_an_item_carries_an_event_or_an_announcement_not_both_nor_neither() -> None:
    with pytest.raises(ValidationError, match="ADT event or a merge announcement"):
        item()
    with pytest.raises(ValidationError, match="ADT event or a merge announcement"):
        item(announcement=announcement("A40"), event=parse_adt_event(DISCHARGE))


def test_a_discharge_item_is_sent_as_received() -> None:
    discharge = item(event=parse_adt_event(DISCHARGE), message_text=DISCHARGE)
    assert outbound_message(discharge) == DISCHARGE


TWO_PATIENTS = (
    A40 + f"PID|1||MRN-T^^^{sm.HOSPITAL}^MR~999^^^SSA^SS||Other^Olga||19700101|F\r" + "MRG|MRN-U\r"
)


def test_each_survivor_queues_on_the_key_its_own_messages_get() -> None:
    key = b"test-key"
    read = parse_identity_message(TWO_PATIENTS)
    assert isinstance(read, MergeMessage)
    first, second = (
        survivor_queue_key(key, SurvivorQueueKeyInput(merge=merge, sending_facility="MSH4"))
        for merge in read.merges
    )
    decoded = decode_message(
        TWO_PATIENTS.encode(),
        supported_types={"ADT": frozenset({"A40"})},
        supported_versions=frozenset({"2.5"}),
    )
    # The first group keys the exchange (and so that patient's A03/A08 queues).
    assert first == patient_pseudonym(decoded, RoutingContext(pseudonym_key=key))
    # The second group's survivor queues where a message about MRN-T alone would.
    alone = A40.replace("MRN-S^", "MRN-T^")
    assert second == patient_pseudonym(
        decode_message(
            alone.encode(),
            supported_types={"ADT": frozenset({"A40"})},
            supported_versions=frozenset({"2.5"}),
        ),
        RoutingContext(pseudonym_key=key),
    )
    assert first != second
