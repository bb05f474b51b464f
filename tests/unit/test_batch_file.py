"""The batch-file reader on the corpus's batch and adversarial files and on files built here:
every line-end style, BOM, FHS/BHS nesting, trailer counts, truncation, clinical order."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from adapters.hl7v2.batch_file import BatchFile, read_batch_file
from adapters.hl7v2.header import decode_message
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus"
ADVERSARIAL = CORPUS / "adversarial"
# The A04s of python-hl7's batch samples are outside the exchanges' types: read them as an
# interface taking every ADT event would, so the envelope is what is under test.
ALL_ADT = {**REGISTRY.supported_types, "ADT": frozenset(f"A{n:02d}" for n in range(1, 62))}
PARIS = ZoneInfo("Europe/Paris")


def read(
    data: bytes, *, types: Mapping[str, frozenset[str]] | None = None, zone: ZoneInfo = PARIS
) -> BatchFile:
    decode = partial(
        decode_message,
        supported_types=types or REGISTRY.supported_types,
        supported_versions=SUPPORTED_VERSIONS,
        required_segments=REGISTRY.required_segments,
    )
    return read_batch_file(data, decode=decode, local_zone=zone)


def a31(control_id: str, sent_at: str) -> list[str]:
    """An invented person update (ADT^A31) as segment lines."""
    return [
        f"MSH|^~\\&|REGSYS|GENHOSP|CAREWEAVE|GENHOSP|{sent_at}||ADT^A31^ADT_A05|{control_id}"
        "|P|2.5.1",
        f"EVN|A31|{sent_at}",
        "PID|1||MRN7001^^^GENHOSP^MR||Testpatient^Alma||19720415|F",
        "PV1|1|N",
    ]


def batch(*messages: list[str], count: int | None = None) -> list[str]:
    given = len(messages) if count is None else count
    lines = ["BHS|^~\\&|REGSYS|GENHOSP|||20261201120000"]
    for message in messages:
        lines += message
    return [*lines, f"BTS|{given}"]


def joined(lines: list[str], end: str = "\r") -> bytes:
    return (end.join(lines) + end).encode()


# -- line ends, BOM, blank lines ------------------------------------------------------


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_every_line_end_style_gives_the_same_messages_and_lines(end: str) -> None:
    lines = [*a31("C1", "20261201100000+0100"), *a31("C2", "20261201100500+0100")]
    read_back = read(joined(lines, end))
    assert [(m.line, m.decoded.header.control_id) for m in read_back.messages] == [
        (1, "C1"),
        (5, "C2"),
    ]
    assert not read_back.bad_messages and not read_back.trailer_problems
    # The raw bytes handed on are CR-separated whatever the file used.
    assert read_back.messages[1].raw == joined(a31("C2", "20261201100500+0100"))


def test_bom_and_blank_lines_between_messages_are_skipped_but_counted_as_lines() -> None:
    data = b"\xef\xbb\xbf" + joined(a31("C1", "20261201100000"), "\n") + b"\n  \n\n"
    data += joined(a31("C2", "20261201100000"), "\n")
    read_back = read(data)
    assert [m.line for m in read_back.messages] == [1, 8]
    assert not read_back.bad_messages


@pytest.mark.parametrize("name", ["lf-separators.hl7", "crlf-separators.hl7"])
def test_corpus_separator_files_are_one_good_message(name: str) -> None:
    read_back = read((ADVERSARIAL / name).read_bytes())
    [message] = read_back.messages
    assert message.line == 1
    assert message.message_type == "ORU^R01"
    assert b"\n" not in message.raw
    assert message.sent_at == datetime(2014, 10, 5, 23, 45, tzinfo=UTC)
    assert not message.local_time_assumed


def test_corpus_bom_file_is_read_past_its_bom_and_judged_by_the_gateway_rules() -> None:
    data = (ADVERSARIAL / "adt-a01-fhirconverter-bom-1.hl7").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    # A01 is not an event the exchanges take: refused for that reason, not for the BOM.
    [bad] = read(data).bad_messages
    assert (bad.line, bad.reason) == (1, "MSH-9 trigger event is not supported on this interface")
    [message] = read(data, types=ALL_ADT).messages
    assert message.message_type == "ADT^A01" and message.line == 1


# -- envelopes and their counts -------------------------------------------------------


def test_corpus_batch_and_file_envelopes_add_up() -> None:
    one_batch = read(
        (CORPUS / "other" / "batch-bhs-adt-a04-pythonhl7-1.hl7").read_bytes(), types=ALL_ADT
    )
    assert [m.line for m in one_batch.messages] == [2, 8]
    assert one_batch.batch_count == 1 and not one_batch.trailer_problems

    two_batches = read(
        (CORPUS / "other" / "file-fhs-batches-pythonhl7-1.hl7").read_bytes(), types=ALL_ADT
    )
    assert [m.line for m in two_batches.messages] == [3, 9, 17]
    assert two_batches.batch_count == 2 and not two_batches.trailer_problems


@pytest.mark.parametrize(
    ("name", "segments_line", "bts_line"),
    [("bad-batch-pythonhl7-1.hl7", 2, 7), ("bad-file-pythonhl7-1.hl7", 3, 8)],
)
def test_corpus_batch_without_msh_is_reported_and_its_count_does_not_add_up(
    name: str, segments_line: int, bts_line: int
) -> None:
    read_back = read((ADVERSARIAL / name).read_bytes(), types=ALL_ADT)
    assert not read_back.messages
    [bad] = read_back.bad_messages
    assert (bad.line, bad.reason) == (segments_line, "message does not start with an MSH segment")
    assert bad.raw.startswith(b"EVN|")
    [problem] = read_back.trailer_problems
    assert (problem.line, problem.segment) == (bts_line, "BTS")
    assert "BTS-1 says 1 message(s)" in problem.text and "holds 0" in problem.text


def test_nested_file_with_right_counts_has_no_problem() -> None:
    lines = [
        "FHS|^~\\&|REGSYS|GENHOSP|||20261201120000",
        *batch(a31("C1", "20261201100000"), a31("C2", "20261201100100")),
        *batch(a31("C3", "20261201100200")),
        "FTS|2",
    ]
    read_back = read(joined(lines, "\r\n"))
    assert [m.line for m in read_back.messages] == [3, 7, 13]
    assert read_back.batch_count == 2
    assert not read_back.trailer_problems and not read_back.bad_messages


def test_wrong_bts_and_fts_counts_are_trailer_problems() -> None:
    lines = [
        "FHS|^~\\&|REGSYS|GENHOSP|||20261201120000",
        *batch(a31("C1", "20261201100000"), a31("C2", "20261201100100"), count=3),
        "FTS|2",
    ]
    read_back = read(joined(lines))
    assert len(read_back.messages) == 2
    assert [(p.segment, p.line, p.text) for p in read_back.trailer_problems] == [
        ("BTS", 11, "BTS-1 says 3 message(s), the batch opened at line 2 holds 2"),
        ("FTS", 12, "FTS-1 says 2 batch(es), the file opened at line 1 holds 1"),
    ]


def test_unreadable_count_and_missing_trailers_are_trailer_problems() -> None:
    lines = ["FHS|^~\\&|REGSYS|GENHOSP", *batch(a31("C1", "20261201100000"))]
    lines[-1] = "BTS|one"
    lines += ["BHS|^~\\&|REGSYS|GENHOSP", *a31("C2", "20261201100100")]  # cut short
    read_back = read(joined(lines, "\n"))
    assert [(p.segment, p.line, p.text) for p in read_back.trailer_problems] == [
        ("BTS", 7, "BTS-1 is not a number"),
        ("BHS", 8, "BHS at line 8 has no BTS (file cut short?)"),
        ("FHS", 1, "FHS at line 1 has no FTS (file cut short?)"),
    ]
    assert [m.decoded.header.control_id for m in read_back.messages] == ["C1", "C2"]


def test_empty_count_is_not_checked() -> None:
    read_back = read(joined([*batch(a31("C1", "20261201100000"))[:-1], "BTS"]))
    assert not read_back.trailer_problems


# -- bad messages ---------------------------------------------------------------------


def test_truncated_corpus_message_inside_a_batch_is_reported_with_its_line() -> None:
    truncated = (ADVERSARIAL / "truncated-mid-segment.hl7").read_bytes()
    data = joined(batch(a31("C1", "20261201100000"), count=2)[:-1]) + truncated
    data += b"\rBTS|2\r"
    read_back = read(data)
    [good] = read_back.messages
    [bad] = read_back.bad_messages
    assert good.line == 2
    assert bad.line == 6
    assert (
        bad.reason == "last segment SPM ends before required field SPM-4: message looks truncated"
    )
    assert bad.message_type == "ORU^R01"
    assert not read_back.trailer_problems  # the truncated message is a message of the batch


def test_missing_or_unreadable_msh7_cannot_be_ordered() -> None:
    missing = a31("C1", "")
    unreadable = a31("C2", "2026-12-01")
    read_back = read(joined([*missing, *unreadable]))
    assert not read_back.messages
    assert [
        (b.line, b.rejection.error_code, b.rejection.field_position) for b in read_back.bad_messages
    ] == [
        (1, "101", 7),
        (5, "102", 7),
    ]
    assert all("clinical order" in b.reason for b in read_back.bad_messages)


# -- clinical order -------------------------------------------------------------------


def test_clinical_order_follows_msh7_with_offsets_then_file_order() -> None:
    lines = [
        *a31("LATE", "20261201120000+0000"),  # 12:00 UTC
        *a31("EARLY", "20261201123000+0100"),  # 11:30 UTC: earlier although written later
        *a31("TIE-A", "20261201110000"),  # Paris local: 10:00 UTC
        *a31("TIE-B", "20261201100000+0000"),  # the same instant, later in the file
        *a31("MINUTE", "202612010955"),  # 08:55 UTC, to the minute
    ]
    read_back = read(joined(lines))
    ordered = [m.decoded.header.control_id for m in read_back.in_clinical_order()]
    assert ordered == ["MINUTE", "TIE-A", "TIE-B", "EARLY", "LATE"]
    assert read_back.local_times == 2
    tie_a = read_back.messages[2]
    assert tie_a.local_time_assumed and tie_a.sent_at.tzinfo == PARIS


def test_ties_keep_file_order_whatever_their_number() -> None:
    lines: list[str] = []
    for n in range(12):
        lines += a31(f"SAME-{n}", "20261201100000+0000")
    ordered = read(joined(lines)).in_clinical_order()
    assert [m.decoded.header.control_id for m in ordered] == [f"SAME-{n}" for n in range(12)]


def test_local_zone_decides_where_an_offsetless_time_falls() -> None:
    lines = [*a31("LOCAL", "20261201103000"), *a31("UTC", "20261201100000+0000")]
    assert [
        m.decoded.header.control_id for m in read(joined(lines), zone=PARIS).in_clinical_order()
    ] == [
        "LOCAL",
        "UTC",
    ]
    assert [
        m.decoded.header.control_id
        for m in read(joined(lines), zone=ZoneInfo("UTC")).in_clinical_order()
    ] == ["UTC", "LOCAL"]
