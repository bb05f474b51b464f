"""The one HL7 v2 field reader (adapters/hl7v2/fields.py), on its own."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone

import pytest

from adapters.hl7v2.fields import (
    FILLER_ORDER_NUMBER_FIELDS,
    PLACER_ORDER_NUMBER_FIELDS,
    Delimiters,
    ExtendedCompositeId,
    ExtendedPerson,
    Segment,
    at,
    components,
    date_value,
    delimiters_from_msh,
    entity_identifier,
    hd_name,
    identifier,
    nested_hd_name,
    person,
    read_segments,
    split_segments,
    subcomponents,
    timestamp,
    unescape,
    unescape_text,
)

D = Delimiters()
MSH = "MSH|^~\\&|LAB|HOSP^1.2.3^ISO||CLINIC|20240102||ORU^R01^ORU_R01|CTRL-1|P|2.5.1"


def test_delimiters_come_from_msh1_and_msh2() -> None:
    assert delimiters_from_msh(MSH) == D
    assert delimiters_from_msh("MSH!#$%*!A") == Delimiters("!", "#", "$", "%", "*")
    assert Delimiters.of("|", "^~\\&#") == D  # the v2.7 truncation character is not one
    assert delimiters_from_msh("MSH|^~\\") is None  # MSH-2 cut short
    assert delimiters_from_msh("MSH|^~\\|A|B") is None


def test_split_segments_drops_blanks_and_empty_segments() -> None:
    assert split_segments("MSH|a  \r\r  \rPID|1\t\r") == ["MSH|a", "PID|1"]


def test_msh_positions_count_the_separator_as_msh1() -> None:
    msh = Segment(MSH, D)
    assert msh.name == "MSH"
    assert msh.field(1) == "|"
    assert msh.field(2) == "^~\\&"
    assert msh.value(2) == msh.component(2, 2) == msh.raw(2) == "^~\\&"  # never split
    assert msh.repetitions(2) == ["^~\\&"]
    assert msh.field(3) == "LAB"
    assert [msh.component(9, n) for n in (1, 2, 3, 4)] == ["ORU", "R01", "ORU_R01", ""]
    assert msh.value(10) == "CTRL-1"
    assert msh.field(0) == msh.field(13) == msh.value(-1) == ""


def test_segment_reads_repetitions_components_and_absent_parts() -> None:
    pid = Segment("PID|1||~A1^^^HOSP&1.2&ISO^MR~B2||SMITH^JO\\S\\E", D)
    assert pid.name == "PID"
    assert pid.repetitions(3) == ["", "A1^^^HOSP&1.2&ISO^MR", "B2"]
    assert pid.repetitions(2) == [""]
    assert pid.repetitions(9) == []
    assert pid.raw(3) == ""
    assert pid.raw(3, 2) == "A1^^^HOSP&1.2&ISO^MR"
    assert pid.raw(3, 4) == pid.raw(3, 0) == ""
    assert pid.component(3, 4, 2) == "HOSP&1.2&ISO"  # subcomponents stay joined
    assert pid.component(5, 2) == "JO\\S\\E"
    assert pid.value(5, 2) == "JO^E"
    assert pid.value(5, 3) == pid.value(5, 0) == pid.value(0) == ""
    assert "SMITH" not in repr(pid)  # values may be patient data


def test_read_segments_leaves_out_lines_that_are_not_segments() -> None:
    lines = [MSH, "PID|1", "wrapped text of the PID", "PV1", "OBX|1"]
    assert [s.name for s in read_segments(lines, D)] == ["MSH", "PID", "OBX"]


def test_split_and_position_helpers() -> None:
    assert components("a^b^^d", D) == ["a", "b", "", "d"]
    assert subcomponents("a&b", D) == ["a", "b"]
    assert (at(["a", "b"], 1), at(["a", "b"], 2), at(["a", "b"], 3), at(["a"], 0)) == (
        "a",
        "b",
        "",
        "",
    )


@pytest.mark.parametrize("read", [unescape, unescape_text])
def test_delimiter_and_hex_escapes_are_resolved(read: Callable[[str, Delimiters], str]) -> None:
    assert read("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", D) == "a|b^c&d~e\\f"
    assert read("CR\\X0D\\LF\\X0a\\", D) == "CR\rLF\n"
    assert read("\\XC4\\", D) == "\u00c4"  # one Latin-1 character per pair
    # Unknown, malformed or unterminated sequences are data: kept verbatim.
    for kept in ("\\Q\\", "\\X0\\", "\\X\\", "\\XZZ\\", "\\C2842\\", "end\\", "a\\b"):
        assert read(kept, D) == kept
    custom = Delimiters("!", "#", "$", "%", "*")
    assert read("%F%%S%%E%", custom) == "!#%"


def test_formatting_escapes_are_kept_or_rendered() -> None:
    value = "one\\.br\\two \\H\\bold\\N\\"
    assert unescape(value, D) == value
    assert unescape_text(value, D) == "one\ntwo bold"
    assert unescape_text("\\.sp\\", D) == "\\.sp\\"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024", datetime(2024, 1, 1)),
        ("202402", datetime(2024, 2, 1)),
        ("20240229", datetime(2024, 2, 29)),
        ("2024022913", datetime(2024, 2, 29, 13)),
        ("202402291345", datetime(2024, 2, 29, 13, 45)),
        ("20240229134512.1234", datetime(2024, 2, 29, 13, 45, 12)),
        ("202402291345-0700", datetime(2024, 2, 29, 13, 45, tzinfo=timezone(-timedelta(hours=7)))),
        (
            "20240229134512+0215^S",
            datetime(2024, 2, 29, 13, 45, 12, tzinfo=timezone(timedelta(hours=2, minutes=15))),
        ),
        ("20230229", None),  # no such day
        ("202402291345-9900", None),  # no such offset (found by the fuzzer)
        ("202402291345+0075", None),
        ("2024-02-29", None),
        ("", None),
    ],
)
def test_timestamps_keep_their_offset_and_stay_naive_without_one(
    raw: str, expected: datetime | None
) -> None:
    assert timestamp(raw, D) == expected


def test_dates() -> None:
    assert date_value("19800101", D) == date(1980, 1, 1)
    assert date_value("198001011230^Y", D) == date(1980, 1, 1)
    assert date_value("196203520", D) is None
    assert date_value("1980", D) is None


def test_hd_ei_xcn_and_cx() -> None:
    assert hd_name("HOSP^1.2.3^ISO", D) == "HOSP"
    assert hd_name("^1.2.3^ISO", D) == "1.2.3"  # universal id when no namespace
    assert nested_hd_name("&1.2.3&ISO", D) == "1.2.3"
    assert entity_identifier(" 123 ^PLAC", D) == ("123", "PLAC")
    assert entity_identifier("123^^2.16.840^ISO", D) == ("123", "2.16.840")
    assert entity_identifier("^PLAC", D) == (None, "PLAC")
    assert person("1234^WELBY&van^MARCUS^^^^^^NPI&2.16.840&ISO", D) == ExtendedPerson(
        identifier="1234", family_name="WELBY", given_name="MARCUS", assigning_authority="NPI"
    )
    assert identifier("A-1^^^HOSP&1.2&ISO^MR", D) == ExtendedCompositeId(
        identifier="A-1", assigning_authority="HOSP", identifier_type="MR"
    )


def test_order_number_rule_is_orc_first_then_obr() -> None:
    assert PLACER_ORDER_NUMBER_FIELDS == (("ORC", 2), ("OBR", 2))
    assert FILLER_ORDER_NUMBER_FIELDS == (("ORC", 3), ("OBR", 3))
