"""The outbound A40 and A37: built with hl7apy from the typed merge, readdressed per
destination as the delivery does, read back by our own reader to the same merges."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hl7apy.parser import parse_message

from adapters.hl7v2.fields import Delimiters, Segment
from adapters.hl7v2.merge_messages import parse_identity_message
from adapters.hl7v2.merge_outbound import build_merge_message, build_unlink_message
from adapters.hl7v2.readdress import readdress
from models.merge import IdentifierMatch, LinkMessage, LinkTrigger, MergeMessage, PatientMerge

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus"
WHEN = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
# Values with every delimiter and the escape character in them, an explicit null, two
# names, two addresses and contacts of both kinds.
TRICKY = (
    "MSH|^~\\&|REG|GENHOSP|CW|CW|20260301101500||ADT^A40^ADT_A39|M-1|P|2.5\r"
    "EVN|A40|20260301101200||MRG|OP77\r"
    "PID|1||MRN\\F\\9001^^^GEN\\T\\HOSP^MR~999-00-9001^^^SSA^SS||"
    'O\\S\\Brien&van^Mia^Jo^Jr^Dr^PhD^L~Kid^Mimi^^^^^N||19800214|""|||'
    "1 Main St\\R\\Rear^Apt 2^Springfield^IL^62701^USA^H^^Sangamon~PO Box 9^^Town^^1^^M||"
    "^PRN^PH^^1^217^5550101~^NET^Internet^mia@example.org|(217)555-0199^WPN^PH|||||"
    "ACC9001^^^GENHOSP^AN\r"
    "MRG|MRN9002^^^GEN\\T\\HOSP^MR||ACC9002^^^GENHOSP^AN||V9002^^^GENHOSP^VN||Oldname^Mia^^^^^M\r"
    "PID|1||MRN9101^^^GENHOSP^MR||Other^Olga||1970|M\r"
    "MRG|MRN9102\r"
)


def merges_of(text: str) -> tuple[PatientMerge, ...]:
    parsed = parse_identity_message(text)
    assert isinstance(parsed, MergeMessage)
    return parsed.merges


def as_announced(merges: tuple[PatientMerge, ...]) -> tuple[PatientMerge, ...]:
    """The merges a destination reads: the retired identifier is written with the type and
    authority it was paired by, so a pairing left unstated by the sender is stated."""
    return tuple(m.model_copy(update={"identifier_match": IdentifierMatch.EXACT}) for m in merges)


def for_destination(text: str) -> str:
    return readdress(
        text,
        sending_application="CAREWEAVE",
        sending_facility="CW",
        receiving_application="PARTNER",
        receiving_facility="PARTNERFAC",
        control_id="CW-0001",
    )


@pytest.mark.parametrize(
    "inbound",
    [(CORPUS / "adt" / "adt-a40-msfhirconv-1.hl7").read_text(), TRICKY],
    ids=["public-a40", "escapes-nulls-two-groups"],
)
def test_built_a40_reads_back_to_the_same_merges(inbound: str) -> None:
    merges = merges_of(inbound)
    built = for_destination(build_merge_message(merges, message_time=WHEN, operator_id="OP77"))
    parsed = parse_identity_message(built)
    assert isinstance(parsed, MergeMessage)
    assert parsed.merges == as_announced(merges)
    assert (parsed.control_id, parsed.sending_facility, parsed.operator_id) == (
        "CW-0001",
        "CW",
        "OP77",
    )
    assert parsed.event_time == WHEN


def test_built_a40_is_addressed_per_destination_and_a_valid_v25_structure() -> None:
    built = for_destination(build_merge_message(merges_of(TRICKY), message_time=WHEN))
    msh = Segment(built.split("\r")[0], Delimiters())
    assert [msh.field(n) for n in (3, 4, 5, 6, 7, 9, 10, 12)] == [
        "CAREWEAVE",
        "CW",
        "PARTNER",
        "PARTNERFAC",
        "20260301101500+0000",
        "ADT^A40^ADT_A39",
        "CW-0001",
        "2.5",
    ]
    # hl7apy reads it back against the v2.5 ADT_A39 structure: two PATIENT groups.
    message = parse_message(built, find_groups=True)
    assert len(message.children.get("ADT_A39_PATIENT")) == 2
    assert [s[:3] for s in built.rstrip("\r").split("\r")] == [
        "MSH",
        "EVN",
        "PID",
        "MRG",
        "PID",
        "MRG",
    ]


def test_a_resend_builds_the_same_bytes() -> None:
    merges = merges_of(TRICKY)
    assert build_merge_message(merges, message_time=WHEN) == build_merge_message(
        merges, message_time=WHEN
    )


def test_only_the_approved_merges_of_a_message_are_announced() -> None:
    merges = merges_of(TRICKY)
    built = build_merge_message(merges[1:], message_time=WHEN)
    assert merges_of(for_destination(built)) == as_announced(merges[1:])
    assert merges[1].identifier_match is IdentifierMatch.UNSTATED


def test_an_account_merge_is_not_announced_as_a40() -> None:
    account_only = merges_of(
        "MSH|^~\\&|REG|GENHOSP|CW|CW|20260301||ADT^A35^ADT_A30|M-2|P|2.5\r"
        "PID|1||MRN9001^^^GENHOSP^MR|||||||||||||||ACC9001\r"
        "MRG|||ACC9002\r"
    )
    with pytest.raises(ValueError, match="account merge"):
        build_merge_message(account_only, message_time=WHEN)
    with pytest.raises(ValueError, match="account merge"):
        build_unlink_message(account_only[0], message_time=WHEN)
    with pytest.raises(ValueError, match="at least one"):
        build_merge_message((), message_time=WHEN)


def test_unlink_names_the_survivor_and_the_restored_record() -> None:
    merge = merges_of(TRICKY)[0]
    built = for_destination(build_unlink_message(merge, message_time=WHEN, event_reason="UNDO"))
    parsed = parse_identity_message(built)
    assert isinstance(parsed, LinkMessage)
    assert parsed.trigger is LinkTrigger.UNLINK
    assert parsed.event_reason == "UNDO"
    assert parsed.first == merge.demographics
    assert merge.retired is not None
    restored = parsed.second
    assert (
        restored.patient.identifier,
        restored.patient.assigning_authority,
        restored.patient.identifier_type,
    ) == (merge.retired.value, merge.retired.assigning_authority, merge.retired.identifier_type)
    assert restored.names == (merge.prior_name,)


def test_unlink_leaves_the_retired_identifier_off_the_survivor() -> None:
    merge = merges_of(
        "MSH|^~\\&|REG|GENHOSP|CW|CW|20260301||ADT^A40^ADT_A39|M-3|P|2.5\r"
        "PID|1||MRN9001^^^GENHOSP^MR~MRN9002^^^GENHOSP^MR\r"
        "MRG|MRN9002^^^GENHOSP^MR\r"
    )[0]
    parsed = parse_identity_message(build_unlink_message(merge, message_time=WHEN))
    assert isinstance(parsed, LinkMessage)
    assert [i.value for i in parsed.first.identifiers] == ["MRN9001"]
    assert parsed.second.patient.identifier == "MRN9002"
