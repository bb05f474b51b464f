"""ACKs: built from the fast path's header/rejection, read back by us and by python-hl7."""

from __future__ import annotations

from pathlib import Path

import hl7
import pytest

from adapters.hl7v2.ack import AckParseError, ack_required, build_ack, parse_ack
from adapters.hl7v2.header import MessageHeader, MessageRejected, decode_message

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus"
TYPES = {
    "ORU": frozenset({"R01"}),
    "ADT": frozenset({"A01", "A08", "A24"}),
    "ORM": frozenset({"O01"}),
}
VERSIONS = frozenset({"2.3", "2.4", "2.5", "2.6"})
TS = "20260101120000"


def _header(path: str) -> MessageHeader:
    payload = (CORPUS / path).read_bytes()
    return decode_message(payload, supported_types=TYPES, supported_versions=VERSIONS).header


def _rejection(path: str) -> MessageRejected:
    payload = (CORPUS / path).read_bytes()
    with pytest.raises(MessageRejected) as caught:
        decode_message(payload, supported_types=TYPES, supported_versions=VERSIONS)
    return caught.value


def test_accept_ack_swaps_applications_and_facilities() -> None:
    header = _header("adversarial/escape-sequences.hl7")
    ack = build_ack(header, "AA", ack_control_id="CW-1", timestamp=TS)
    assert ack == (
        "MSH|^~\\&|EHR|NORTHHOSP|LIS|NORTHLAB|20260101120000||ACK^R01^ACK|CW-1|P|2.5.1\r"
        "MSA|AA|ADV-0006"
    )
    assert parse_ack(ack) == ("AA", "ADV-0006", "")


def test_rejection_v25_has_err2_err3_err4() -> None:
    rejection = _rejection("adversarial/unknown-message-type.hl7")
    ack = build_ack(
        rejection.header, "AR", rejection=rejection, ack_control_id="CW-2", timestamp=TS
    )
    segments = ack.split("\r")
    assert segments[1].startswith("MSA|AR|ADV-0001|MSH-9 message type is not supported")
    assert segments[2] == (
        "ERR||MSH^1^9|200^Unsupported message type^HL70357|E||||"
        "MSH-9 message type is not supported on this interface"
    )
    assert parse_ack(ack) == ("AR", "ADV-0001", "200")


def test_rejection_before_v25_uses_err1() -> None:
    payload = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X1|P|2.3\rPID|1||1\r"
    with pytest.raises(MessageRejected) as caught:
        decode_message(payload, supported_types=TYPES, supported_versions=VERSIONS)
    rejection = caught.value
    ack = build_ack(rejection.header, "AE", rejection=rejection, ack_control_id="C", timestamp=TS)
    assert ack.split("\r")[2] == "ERR|OBR^2^^100&Segment sequence error&HL70357"
    # MSH-9.3 (message structure) only exists from v2.3.1 on.
    assert ack.split("\r")[0].split("|")[8] == "ACK^R01"
    assert parse_ack(ack) == ("AE", "X1", "100")


def test_without_header_defaults_to_v25_and_empty_msa2() -> None:
    rejection = _rejection("adversarial/no-msh.hl7")
    assert rejection.header is None
    ack = build_ack(None, "AR", rejection=rejection, ack_control_id="C", timestamp=TS)
    assert ack.startswith("MSH|^~\\&|||||20260101120000||ACK^^ACK|C|P|2.5\rMSA|AR||")
    assert parse_ack(ack) == ("AR", "", "100")


def test_custom_delimiters_are_used_in_the_ack() -> None:
    header = _header("adversarial/adt-a24-hapi-customdelims-1.hl7")
    ack = build_ack(header, "AA", ack_control_id="C", timestamp=TS)
    assert ack.startswith("MSH^~|\\&^RECEIVING^200^SENDING^200M^")
    assert "^ACK~A24~ACK^" in ack
    assert parse_ack(ack) == ("AA", "2003582144", "")


def test_delimiters_in_the_text_are_escaped() -> None:
    rejection = MessageRejected("AE", "207", "a|b^c~d&e\\f\rg", header=None)
    ack = build_ack(None, "AE", rejection=rejection, ack_control_id="C", timestamp=TS)
    assert "a\\F\\b\\S\\c\\R\\d\\T\\e\\E\\f\\X0D\\g" in ack
    assert len(ack.split("\r")) == 3


def test_python_hl7_parses_our_acks() -> None:
    rejection = _rejection("adversarial/unsupported-version.hl7")
    for ack in (
        build_ack(
            _header("results/oru-r01-v24-pythonhl7-1.hl7"), "AA", ack_control_id="C1", timestamp=TS
        ),
        build_ack(rejection.header, "AR", rejection=rejection, ack_control_id="C2", timestamp=TS),
    ):
        parsed = hl7.parse(ack)
        assert str(parsed.segment("MSH")[9][0][0]) == "ACK"
        assert str(parsed.segment("MSA")[1]) in ("AA", "AR")
    parsed = hl7.parse(
        build_ack(rejection.header, "AR", rejection=rejection, ack_control_id="C2", timestamp=TS)
    )
    assert str(parsed.segment("MSA")[2]) == "ADV-0002"
    assert str(parsed.segment("ERR")[3][0][0]) == "203"
    assert str(parsed.segment("MSH")[5]) == "LIS"


@pytest.mark.parametrize(
    ("accept_ack_type", "ack_code", "expected"),
    [
        ("", "AA", True),
        ("", "AR", True),
        ("AL", "AE", True),
        ("NE", "AA", False),
        ("NE", "AR", False),
        ("ER", "AA", False),
        ("ER", "AE", True),
        ("SU", "AA", True),
        ("SU", "AR", False),
    ],
)
def test_ack_required_follows_msh15(accept_ack_type: str, ack_code: str, expected: bool) -> None:
    header = _header("adversarial/escape-sequences.hl7")
    header = MessageHeader(**{**header.__dict__, "accept_ack_type": accept_ack_type})
    assert ack_required(header, ack_code) is expected


@pytest.mark.parametrize("text", ["", "PID|1", "MSH|^~\\&|A\rPID|1", "MSH|^~"])
def test_parse_ack_refuses_what_is_not_an_ack(text: str) -> None:
    with pytest.raises(AckParseError):
        parse_ack(text)
