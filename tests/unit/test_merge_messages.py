"""The merge / link / unlink reader: A40 (one and several MRG), A18, A34, A35, A36, A24,
A37; MRG-1 paired by identifier type; refusals located as the gateway's ACK needs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.hl7v2.ack import build_ack
from adapters.hl7v2.fields import Delimiters, Segment
from adapters.hl7v2.header import MessageRejected, decode_message
from adapters.hl7v2.merge_messages import (
    MergeMessageInvalid,
    check_identity_event,
    parse_identity_message,
)
from adapters.hl7v2.person_messages import parse_person_update, read_person_demographics
from models.merge import IdentifierMatch, LinkMessage, LinkTrigger, MergeMessage, MergeTrigger
from models.person import PersonIdentifier, PersonName

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus"
MSH = "MSH|^~\\&|REG|GENHOSP|CW|CW|20260301101500||ADT^{event}^{structure}|{control}|P|2.5"
EVN = "EVN|{event}|20260301101200||MRG|OP77^Registrar^Rita"
SURVIVOR_PID = (
    "PID|1||MRN9001^^^GENHOSP^MR~999-00-9001^^^SSA^SS||Merge&van^Mia^J||19800214|F|||"
    "1 Main St^^Springfield^IL^62701^^H||^PRN^PH^^1^217^5550101|||||ACC9001^^^GENHOSP^AN"
)


def message(event: str, *segments: str, structure: str = "ADT_A39", control: str = "M-1") -> str:
    header = MSH.format(event=event, structure=structure, control=control)
    return "\r".join((header, EVN.format(event=event), *segments)) + "\r"


def merge_of(text: str) -> MergeMessage:
    parsed = parse_identity_message(text)
    assert isinstance(parsed, MergeMessage)
    return parsed


def refusal(text: str) -> MergeMessageInvalid:
    with pytest.raises(MergeMessageInvalid) as caught:
        parse_identity_message(text)
    return caught.value


def test_public_a40_survivor_retired_and_demographics() -> None:
    text = (CORPUS / "adt" / "adt-a40-msfhirconv-1.hl7").read_text()
    parsed = merge_of(text)
    assert parsed.trigger is MergeTrigger.MERGE_PATIENT_IDENTIFIER_LIST
    assert (parsed.control_id, parsed.sending_facility) == ("8919-40", "Ntierprise Clinic")
    assert (parsed.event_reason, parsed.operator_id) == ("01", "13")
    assert parsed.event_time is not None and parsed.event_time.isoformat() == (
        "2019-04-23T15:01:37+02:15"
    )
    (merge,) = parsed.merges
    assert merge.survivor == PersonIdentifier(
        value="12345", assigning_authority="BCBS", identifier_type="MR"
    )
    assert merge.retired == PersonIdentifier(
        value="56789", assigning_authority="BCBS", identifier_type="MR"
    )
    assert merge.identifier_match is IdentifierMatch.EXACT
    assert merge.account == PersonIdentifier(value="5027440", identifier_type="AN")
    assert (merge.prior_account, merge.prior_visit, merge.prior_name) == (None, None, None)
    assert merge.demographics.names == (PersonName(family="Test", given=("Test", "A")),)
    assert (merge.demographics.birth_date, merge.demographics.sex) == ("2018-02-05", "F")


def test_survivor_demographics_are_what_patient_sync_reads_from_the_same_pid() -> None:
    merge = merge_of(
        message("A40", SURVIVOR_PID, "MRG|MRN9002^^^GENHOSP^MR||OLDACC^^^GENHOSP^AN")
    ).merges[0]
    as_person_update = parse_person_update(message("A31", SURVIVOR_PID, structure="ADT_A05"))
    assert merge.demographics.model_dump() == as_person_update.model_dump(
        exclude={"trigger", "control_id", "sending_facility"}
    )


def test_a40_reads_prior_account_visit_and_name() -> None:
    merge = merge_of(
        message(
            "A40",
            SURVIVOR_PID,
            "MRG|MRN9002^^^GENHOSP^MR||ACC9002^^^GENHOSP^AN||V9002^^^GENHOSP^VN||"
            "Oldname&de^Mia^^^^^M~Other^Name",
        )
    ).merges[0]
    assert merge.retired == PersonIdentifier(
        value="MRN9002", assigning_authority="GENHOSP", identifier_type="MR"
    )
    assert merge.prior_account == PersonIdentifier(
        value="ACC9002", assigning_authority="GENHOSP", identifier_type="AN"
    )
    assert merge.prior_visit == PersonIdentifier(
        value="V9002", assigning_authority="GENHOSP", identifier_type="VN"
    )
    assert merge.prior_name == PersonName(family="Oldname", given=("Mia",), name_type="M")


def test_several_patient_groups_are_several_merges_in_message_order() -> None:
    second_pid = "PID|1||MRN9101^^^GENHOSP^MR||Other^Olga||19700101|F"
    parsed = merge_of(
        message(
            "A40",
            SURVIVOR_PID,
            "PD1|||GENHOSP",
            "MRG|MRN9002^^^GENHOSP^MR",
            "PV1|1|N",
            second_pid,
            "MRG|MRN9102^^^GENHOSP^MR",
            "MRG|MRN9103^^^GENHOSP^MR",
        )
    )
    pairs = [(m.retired.value if m.retired else "", m.survivor.value) for m in parsed.merges]
    assert pairs == [("MRN9002", "MRN9001"), ("MRN9102", "MRN9101"), ("MRN9103", "MRN9101")]
    assert parsed.merges[1].demographics.names[0].family == "Other"


def test_mrg1_repetition_of_the_survivors_type_is_the_retired_one() -> None:
    merge = merge_of(
        message(
            "A40",
            SURVIVOR_PID,
            "MRG|999-00-9002^^^SSA^SS~MRN9002^^^OTHERHOSP^MR~MRN9003^^^GENHOSP^MR",
        )
    ).merges[0]
    # The SS repetition has another type, the OTHERHOSP one another authority.
    assert merge.retired == PersonIdentifier(
        value="MRN9003", assigning_authority="GENHOSP", identifier_type="MR"
    )
    assert merge.identifier_match is IdentifierMatch.EXACT


def test_mrg1_without_type_or_authority_is_taken_as_the_survivors_kind_and_says_so() -> None:
    merge = merge_of(message("A40", SURVIVOR_PID, "MRG|999-00-9002^^^SSA^SS~MRN9002")).merges[0]
    assert merge.retired == PersonIdentifier(
        value="MRN9002", assigning_authority="GENHOSP", identifier_type="MR"
    )
    assert merge.identifier_match is IdentifierMatch.UNSTATED


def test_mrg1_of_another_type_only_is_refused_never_guessed() -> None:
    err = refusal(message("A40", SURVIVOR_PID, "MRG|999-00-9002^^^SSA^SS~MRN9002^^^OTHER^MR"))
    assert (err.ack_code, err.error_code) == ("AE", "101")
    assert (err.segment_id, err.segment_sequence, err.field_position) == ("MRG", 4, 1)
    assert "999" not in str(err) and "MRN" not in str(err)


def test_a_record_merged_into_itself_is_refused() -> None:
    err = refusal(message("A40", SURVIVOR_PID, "MRG|MRN9001^^^GENHOSP^MR"))
    assert (err.ack_code, err.error_code, err.segment_id, err.field_position) == (
        "AE",
        "205",
        "MRG",
        1,
    )


def test_a40_without_mrg_is_refused_naming_mrg() -> None:
    err = refusal(message("A40", SURVIVOR_PID, "PV1|1|N"))
    assert (err.ack_code, err.error_code, err.segment_id) == ("AE", "100", "MRG")
    assert "MRG" in err.text
    # The second group lacks its MRG: still refused, the whole message, nothing half-applied.
    err = refusal(message("A40", SURVIVOR_PID, "MRG|MRN9002^^^GENHOSP^MR", SURVIVOR_PID))
    assert (err.segment_id, err.segment_sequence) == ("MRG", 5)


def test_mrg_with_empty_prior_identifier_list_is_refused() -> None:
    err = refusal(message("A40", SURVIVOR_PID, "MRG|||ACC1"))
    assert (err.error_code, err.segment_id, err.field_position) == ("101", "MRG", 1)


def test_survivor_without_identifier_is_refused_naming_pid3() -> None:
    err = refusal(message("A40", "PID|1||||Name^Only", "MRG|MRN9002^^^GENHOSP^MR"))
    assert (err.error_code, err.segment_id, err.field_position) == ("101", "PID", 3)


@pytest.mark.parametrize(
    ("event", "structure", "trigger"),
    [
        ("A34", "ADT_A30", MergeTrigger.MERGE_PATIENT_IDENTIFIER),
        ("A18", "ADT_A18", MergeTrigger.MERGE_PATIENT_INFORMATION),
    ],
)
def test_older_patient_id_merges(event: str, structure: str, trigger: MergeTrigger) -> None:
    parsed = merge_of(message(event, SURVIVOR_PID, "MRG|MRN9002^^^GENHOSP^MR", structure=structure))
    assert parsed.trigger is trigger
    (merge,) = parsed.merges
    assert (merge.survivor.value, merge.retired and merge.retired.value) == ("MRN9001", "MRN9002")


def test_a36_merges_identifier_and_account() -> None:
    parsed = merge_of(
        message(
            "A36",
            SURVIVOR_PID,
            "MRG|MRN9002^^^GENHOSP^MR||ACC9002^^^GENHOSP^AN",
            structure="ADT_A30",
        )
    )
    (merge,) = parsed.merges
    assert merge.retired is not None and merge.retired.value == "MRN9002"
    assert (
        merge.prior_account and merge.prior_account.value,
        merge.account and merge.account.value,
    ) == (
        "ACC9002",
        "ACC9001",
    )


def test_a35_merges_the_account_only() -> None:
    parsed = merge_of(
        message("A35", SURVIVOR_PID, "MRG|||ACC9002^^^GENHOSP^AN", structure="ADT_A30")
    )
    (merge,) = parsed.merges
    assert (merge.retired, merge.identifier_match) == (None, None)
    assert merge.prior_account is not None and merge.prior_account.value == "ACC9002"
    err = refusal(message("A35", SURVIVOR_PID, "MRG|MRN9002", structure="ADT_A30"))
    assert (err.error_code, err.segment_id, err.field_position) == ("101", "MRG", 3)


def test_older_forms_carry_one_merge() -> None:
    err = refusal(
        message(
            "A34",
            SURVIVOR_PID,
            "MRG|MRN9002^^^GENHOSP^MR",
            "MRG|MRN9003^^^GENHOSP^MR",
            structure="ADT_A30",
        )
    )
    assert (err.error_code, err.segment_id, err.segment_sequence) == ("100", "MRG", 5)


def test_public_a24_with_custom_delimiters_links_two_records() -> None:
    text = (CORPUS / "adversarial" / "adt-a24-hapi-customdelims-1.hl7").read_text()
    parsed = parse_identity_message(text)
    assert isinstance(parsed, LinkMessage)
    assert parsed.trigger is LinkTrigger.LINK
    assert [
        (r.patient.identifier, r.patient.assigning_authority) for r in (parsed.first, parsed.second)
    ] == [
        ("11111", "FOO"),
        ("22222", "FOO"),
    ]
    assert parsed.first.patient.identifier_type == "NI"
    assert parsed.first.names == (PersonName(family="SMITH", given=("JOHN", "TEST")),)


def test_a24_through_the_gateway_decoder_reads_the_same() -> None:
    payload = (CORPUS / "adversarial" / "adt-a24-hapi-customdelims-1.hl7").read_bytes()
    decoded = decode_message(
        payload, supported_types={"ADT": frozenset({"A24"})}, supported_versions=frozenset({"2.4"})
    )
    assert check_identity_event(decoded.header) is LinkTrigger.LINK
    parsed = parse_identity_message(decoded.text, header=decoded.header)
    assert isinstance(parsed, LinkMessage)
    assert parsed.second.patient.identifier == "22222"


def test_a37_unlink_needs_two_pids() -> None:
    first = "PID|1||MRN9001^^^GENHOSP^MR||Merge^Mia"
    second = "PID|2||MRN9002^^^GENHOSP^MR||Merge^Mia"
    parsed = parse_identity_message(message("A37", first, "PV1|1|N", second, structure="ADT_A37"))
    assert isinstance(parsed, LinkMessage) and parsed.trigger is LinkTrigger.UNLINK
    assert (parsed.first.patient.identifier, parsed.second.patient.identifier) == (
        "MRN9001",
        "MRN9002",
    )
    err = refusal(message("A37", first, structure="ADT_A37"))
    assert (err.error_code, err.segment_id) == ("100", "PID")


@pytest.mark.parametrize("event", ["A41", "A42"])
def test_account_and_visit_merges_are_refused_naming_the_event(event: str) -> None:
    text = message(event, SURVIVOR_PID, "MRG|MRN9002^^^GENHOSP^MR", structure="ADT_A39")
    err = refusal(text)
    assert (err.ack_code, err.error_code, err.segment_id, err.field_position) == (
        "AR",
        "201",
        "MSH",
        9,
    )
    assert event in err.text
    # What the gateway does with it when a routing function raises it: AR, ERR naming it.
    decoded = decode_message(
        text.encode(),
        supported_types={"ADT": frozenset({event})},
        supported_versions=frozenset({"2.5"}),
    )
    with pytest.raises(MessageRejected) as caught:
        check_identity_event(decoded.header)
    ack = build_ack(
        decoded.header, "AR", rejection=caught.value, ack_control_id="ACK1", timestamp="20260301"
    )
    err_segment = ack.split("\r")[2]
    assert err_segment.startswith("ERR||MSH^1^9|201^Unsupported event code^HL70357|E")
    assert event in err_segment
    assert "MSA|AR|M-1" in ack


def test_other_events_and_types_are_refused() -> None:
    err = refusal(message("A01", SURVIVOR_PID, structure="ADT_A01"))
    assert (err.ack_code, err.error_code) == ("AR", "201")
    err = refusal(message("A40", SURVIVOR_PID).replace("ADT^A40", "ORU^R01", 1))
    assert (err.ack_code, err.error_code) == ("AR", "200")


def test_refusals_in_an_activity_carry_no_header_and_no_value() -> None:
    err = refusal(message("A40", "PID|1||MRN9001^^^GENHOSP^MR||X^Y||1980021x", "MRG|MRN9002"))
    assert err.header is None
    assert (err.error_code, err.segment_id, err.field_position) == ("102", "PID", 7)
    assert "1980021x" not in str(err)


def test_person_reader_is_the_one_used() -> None:
    # The same function patient-sync's reader is built on reads one PID alone.
    d = Delimiters()
    demographics = read_person_demographics(Segment(SURVIVOR_PID, d), d)
    merge = merge_of(message("A40", SURVIVOR_PID, "MRG|MRN9002^^^GENHOSP^MR")).merges[0]
    assert merge.demographics == demographics
