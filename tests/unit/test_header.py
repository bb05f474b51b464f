"""The gateway's fast path against the whole public corpus and the README's adversarial table."""

from __future__ import annotations

import timeit
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2.framing import END_BLOCK
from adapters.hl7v2.header import (
    DecodedMessage,
    MessageRejected,
    accept_ack_condition,
    decode_message,
    unescape,
)

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus"
ADVERSARIAL = CORPUS / "adversarial"

ALL_TYPES: dict[str, frozenset[str]] = {
    "ADT": frozenset(f"A{n:02d}" for n in range(1, 41)),
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21"}),
    "OMD": frozenset({"O03"}),
    "RDE": frozenset({"O11"}),
    "ORU": frozenset({"R01"}),
    "OUL": frozenset({"R22"}),
    "SIU": frozenset({"S12", "S14"}),
    "MDM": frozenset({"T01", "T02"}),
    "VXU": frozenset({"V04"}),
    "PPR": frozenset({"PC1"}),
}
LAB_TYPES: dict[str, frozenset[str]] = {
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21"}),
    "ORU": frozenset({"R01"}),
}
VERSIONS = frozenset({"2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8"})

ACCEPTED = "AA"

# One row per adversarial file: (file, types offered, expected answer, HL7 0357 code,
# segment named in ERR). Expectations are the corpus README's table.
ADVERSARIAL_TABLE: list[tuple[str, str, str, str | None, str | None]] = [
    ("lf-separators", "all", ACCEPTED, None, None),
    ("crlf-separators", "all", ACCEPTED, None, None),
    ("trailing-whitespace-and-empty-segments", "all", ACCEPTED, None, None),
    ("no-msh", "all", "AR", "100", "MSH"),
    ("truncated-mid-segment", "all", "AR", "101", "SPM"),
    ("empty", "all", "AR", "100", "MSH"),
    ("bad-encoding-characters", "all", "AR", "102", "MSH"),
    # The framing layer already refuses this frame (test_framing); were the byte to reach
    # the fast path some other way, it is refused here too, naming OBX-5.
    ("embedded-mllp-start-byte", "all", "AR", "102", "OBX"),
    ("unknown-message-type", "all", "AR", "200", "MSH"),
    ("unsupported-version", "all", "AR", "203", "MSH"),
    ("latin1-bytes-declared-8859-1", "all", ACCEPTED, None, None),
    ("latin1-bytes-undeclared", "all", "AE", "102", "MSH"),
    ("escape-sequences", "all", ACCEPTED, None, None),
    # Comparators in NM values are the result mapping's concern (mappings/order_to_result);
    # syntactically the message is sound.
    ("nonnumeric-nm-values", "all", ACCEPTED, None, None),
    # Kept verbatim as data; nothing in this layer interprets values.
    ("injection-strings", "all", ACCEPTED, None, None),
    # Order matching (order-to-result workflow) sends it to review; the fast path accepts.
    ("missing-placer-and-filler", "all", ACCEPTED, None, None),
    # Tested per message below: the file holds two frames' payloads.
    ("same-control-id-twice", "split", ACCEPTED, None, None),
    ("bad-batch-pythonhl7-1", "all", "AR", "100", "BHS"),
    ("bad-file-pythonhl7-1", "all", "AR", "100", "FHS"),
    # The fast path's required-segment check answers AE naming OBR; the full parse would
    # find the same.
    ("pid-only-repetitions-pythonhl7-1", "all", "AE", "100", "OBR"),
    ("adt-a01-fhirconverter-bom-1", "all", ACCEPTED, None, None),
    ("adt-a01-linuxforhealth-win-1", "all", ACCEPTED, None, None),
    ("adt-a01-linuxforhealth-unix-1", "all", ACCEPTED, None, None),
    ("adt-a24-hapi-customdelims-1", "all", ACCEPTED, None, None),
    ("adt-a01-nodehl7complete-oneline-1", "all", "AR", "100", "MSH"),
    # The broken line starts with content, so ERR names the sequence, not an id.
    ("orm-o01-nodehl7complete-wrapped-1", "all", "AE", "100", ""),
    ("oml-o21-fhirconverter-mergedseg-1", "all", "AE", "100", "ORC"),
    ("oml-o21-hapi-multimessage-1", "all", "AR", "100", "MSH"),
    ("siu-s12-nodehl7complete-badphone-1", "lab", "AR", "102", "MSH"),
    ("siu-s12-nodehl7complete-badphone-1", "all", "AR", "102", "MSH"),
]


def _decode(payload: bytes, types: dict[str, frozenset[str]] = ALL_TYPES) -> DecodedMessage:
    return decode_message(payload, supported_types=types, supported_versions=VERSIONS)


def _messages(name: str) -> list[bytes]:
    raw = (ADVERSARIAL / f"{name}.hl7").read_bytes()
    if name == "same-control-id-twice":
        return [m for m in raw.split(END_BLOCK) if m]
    return [raw]


def test_table_covers_every_adversarial_file() -> None:
    files = {p.stem for p in ADVERSARIAL.glob("*.hl7")}
    assert files == {row[0] for row in ADVERSARIAL_TABLE}


@pytest.mark.parametrize(("name", "types", "answer", "error_code", "segment_id"), ADVERSARIAL_TABLE)
def test_adversarial_file(
    name: str, types: str, answer: str, error_code: str | None, segment_id: str | None
) -> None:
    offered = LAB_TYPES if types == "lab" else ALL_TYPES
    for payload in _messages(name):
        if answer == ACCEPTED:
            decoded = _decode(payload, offered)
            assert decoded.header.control_id
            continue
        with pytest.raises(MessageRejected) as caught:
            _decode(payload, offered)
        rejection = caught.value
        assert (rejection.ack_code, rejection.error_code) == (answer, error_code)
        assert rejection.segment_id == segment_id
        assert rejection.segment_sequence >= 1


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for folder in ("adt", "orders", "results", "other")
        for p in (CORPUS / folder).glob("*.hl7")
        if not p.stem.startswith(("batch-", "file-"))
    ),
    ids=lambda p: p.stem,
)
def test_every_published_sample_is_accepted(path: Path) -> None:
    decoded = _decode(path.read_bytes())
    assert decoded.segments[0].startswith("MSH")
    assert decoded.header.message_code == path.stem[:3].upper()
    assert decoded.text == "\r".join(decoded.segments)


@pytest.mark.parametrize("name", ["batch-bhs-adt-a04-pythonhl7-1", "file-fhs-batches-pythonhl7-1"])
def test_batches_are_refused_as_a_whole_with_a_clear_reason(name: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        _decode((CORPUS / "other" / f"{name}.hl7").read_bytes())
    assert caught.value.ack_code == "AR"
    assert "batch import is not supported" in caught.value.text


def test_unsupported_type_for_the_lab_exchanges() -> None:
    with pytest.raises(MessageRejected) as caught:
        _decode((CORPUS / "other" / "siu-s12-msfhirconv-1.hl7").read_bytes(), LAB_TYPES)
    assert (caught.value.ack_code, caught.value.error_code) == ("AR", "200")
    assert caught.value.header is not None
    assert caught.value.header.message_type == "SIU^S12"


def test_unsupported_event_is_201() -> None:
    payload = (CORPUS / "adt" / "adt-a01-hapi-1.hl7").read_bytes()
    with pytest.raises(MessageRejected) as caught:
        _decode(payload, {"ADT": frozenset({"A03"})})
    assert caught.value.error_code == "201"


def test_normalizations_are_recorded() -> None:
    bom = _decode((ADVERSARIAL / "adt-a01-fhirconverter-bom-1.hl7").read_bytes())
    assert bom.normalizations == (
        "utf-8 BOM stripped",
        "LF separators normalized to CR",
        "trailing blanks removed",
    )
    assert not bom.text.startswith("\ufeff")
    trailing = _decode((ADVERSARIAL / "trailing-whitespace-and-empty-segments.hl7").read_bytes())
    assert "empty segments dropped" in trailing.normalizations
    assert trailing.header.application_ack_type == "NE"
    assert [s[:3] for s in trailing.segments] == ["MSH", "PID", "OBR", "OBX"]
    crlf = _decode((ADVERSARIAL / "crlf-separators.hl7").read_bytes())
    assert crlf.normalizations == ("CRLF separators normalized to CR",)
    assert "\n" not in crlf.text


def test_header_fields() -> None:
    decoded = _decode((CORPUS / "results" / "oru-r01-lri-cbc-msfhirconv-1.hl7").read_bytes())
    header = decoded.header
    assert header.field_separator == "|"
    assert header.encoding_characters == "^~\\&"
    assert header.message_type == "ORU^R01"
    assert header.message_structure == "ORU_R01"
    assert header.sending_application == "NIST Test Lab APP"
    assert header.version_id == "2.5.1"
    assert header.processing_id == "T"
    assert decoded.field("MSH", 10) == header.control_id
    assert decoded.field("MSH", 1) == "|"
    assert decoded.field("MSH", 9, 2) == "R01"


def test_custom_delimiters_are_honoured() -> None:
    decoded = _decode((ADVERSARIAL / "adt-a24-hapi-customdelims-1.hl7").read_bytes())
    header = decoded.header
    assert (header.field_separator, header.encoding_characters) == ("^", "~|\\&")
    assert header.message_type == "ADT^A24"
    assert header.control_id == "2003582144"
    assert header.sending_application == "SENDING"
    assert decoded.field("PID", 5, 1) == "SMITH"
    assert decoded.field("PID", 5, 2) == "JOHN"
    assert decoded.field("PID", 3, 4) == "FOO&&0363"
    assert len(decoded.segments_named("PID")) == 2


def test_doubled_escape_character_in_msh2_is_read_as_one() -> None:
    decoded = _decode((ADVERSARIAL / "adt-a01-linuxforhealth-win-1.hl7").read_bytes())
    assert decoded.header.encoding_characters == "^~\\&"
    assert "doubled escape character in MSH-2 read as one" in decoded.normalizations
    assert decoded.text.startswith("MSH|^~\\&|SE050|")
    # The literal backslash-r in MSH-24 is an unknown escape: kept as data.
    assert decoded.field("MSH", 24, 3) == 'IPv6\\r"'


def test_escape_sequences_are_unescaped() -> None:
    decoded = _decode((ADVERSARIAL / "escape-sequences.hl7").read_bytes())
    assert decoded.field("OBX", 7) == "0.6&1.2 range"
    note = decoded.field("NTE", 3)
    assert "Field sep | component ^ repetition ~ escape \\ hex CR \r highlighted" in note
    assert "\\H\\text\\N\\" in note


def test_latin1_declared_keeps_umlauts() -> None:
    decoded = _decode((ADVERSARIAL / "latin1-bytes-declared-8859-1.hl7").read_bytes())
    assert decoded.field("PID", 5, 1) == "M\u00dcLLER"
    assert decoded.field("PID", 5, 2) == "J\u00d6RG"


def test_header_is_read_from_the_decoded_msh_when_it_is_not_ascii() -> None:
    # Read once from Latin-1 bytes to decide the character set, then again from the text
    # the declared character set gives, which is the one the ACK and routing use.
    payload = (
        "MSH|^~\\&|LAB|KLINIK M\u00dcNCHEN|EHR|STATION S\u00dcD|20260101||ORU^R01|X1|P|2.5"
        "|||||UNICODE UTF-8\rPID|1||A-1\rOBR|1|PO-1||c\rOBX|1|NM|c||1\r"
    ).encode()
    decoded = _decode(payload)
    assert decoded.header.sending_facility == "KLINIK M\u00dcNCHEN"
    assert decoded.header.receiving_facility == "STATION S\u00dcD"
    assert decoded.field("MSH", 4) == "KLINIK M\u00dcNCHEN"


def test_latin1_undeclared_uses_the_configured_fallback() -> None:
    payload = (ADVERSARIAL / "latin1-bytes-undeclared.hl7").read_bytes()
    decoded = decode_message(
        payload, supported_types=ALL_TYPES, supported_versions=VERSIONS, fallback_charset="cp1252"
    )
    assert "decoded as cp1252 (no MSH-18, not valid UTF-8)" in decoded.normalizations
    assert "\u00d1" in decoded.field("PID", 5, 1)


def test_declared_charset_that_does_not_fit_the_bytes_is_ae() -> None:
    payload = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X1|P|2.5|||||ASCII\rOBR|1|||c\xe9\r"
    with pytest.raises(MessageRejected) as caught:
        _decode(payload)
    assert (caught.value.ack_code, caught.value.error_code, caught.value.field_position) == (
        "AE",
        "102",
        18,
    )


def test_version_family() -> None:
    payload = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|X1|P|2.5.1\rOBR|1|||c\r"

    def decode(versions: frozenset[str]) -> str:
        return decode_message(
            payload, supported_types=ALL_TYPES, supported_versions=versions
        ).header.version_id

    assert decode(frozenset({"2.5"})) == "2.5.1"
    assert decode(frozenset({"2.5.1"})) == "2.5.1"
    with pytest.raises(MessageRejected):
        decode(frozenset({"2.5.2", "2.6"}))
    with pytest.raises(MessageRejected):
        decode(frozenset({"2.51"}))


@pytest.mark.parametrize(
    ("msh_tail", "error_code", "field_position"),
    [
        ("||X1|P|2.5", "101", 9),
        ("|ORU^R01||P|2.5", "101", 10),
        ("|ORU^R01|X1|P|", "101", 12),
        ("|ORU^R01|A^B|P|2.5", "102", 10),
        ("|ORU^R01|X1|P|2.5|||XX", "102", 15),
    ],
)
def test_header_field_errors(msh_tail: str, error_code: str, field_position: int) -> None:
    payload = f"MSH|^~\\&|A|B|C|D|20260101|{msh_tail}\rOBR|1|||c\r".encode()
    with pytest.raises(MessageRejected) as caught:
        _decode(payload)
    assert (caught.value.ack_code, caught.value.error_code) == ("AR", error_code)
    assert caught.value.field_position == field_position


def test_rejection_texts_carry_no_message_content() -> None:
    for path in sorted(ADVERSARIAL.glob("*.hl7")):
        for payload in _messages(path.stem):
            try:
                _decode(payload, LAB_TYPES)
            except MessageRejected as rejection:
                values = {
                    v
                    for segment in payload.replace(b"\n", b"\r").split(b"\r")[1:]
                    for v in segment.decode("latin-1").split("|")[1:]
                    if len(v) > 3
                }
                leaked = [v for v in values if v in rejection.text]
                assert not leaked, path.name


def test_unescape() -> None:
    enc = "^~\\&"
    assert unescape("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", enc) == "a|b^c&d~e\\f"
    assert unescape("\\X0D0A\\", enc) == "\r\n"
    assert unescape("\\XZZ\\ \\Q\\ \\.br\\ end\\", enc) == "\\XZZ\\ \\Q\\ \\.br\\ end\\"
    assert unescape("plain", enc) == "plain"
    assert unescape("#F#", "^~#&", field_separator="!") == "!"


def test_fast_path_is_well_under_a_millisecond() -> None:
    payload = (CORPUS / "results" / "oru-r01-lri-cbc-msfhirconv-1.hl7").read_bytes()
    runs = 200
    seconds = min(timeit.repeat(lambda: _decode(payload), number=runs, repeat=3)) / runs
    assert seconds < 0.001


_CORPUS_PAYLOADS = [p.read_bytes() for p in sorted(CORPUS.glob("*/*.hl7"))]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=400))
def test_arbitrary_bytes_only_ever_raise_message_rejected(payload: bytes) -> None:
    for candidate in (payload, b"MSH|^~\\&|" + payload):
        try:
            _decode(candidate)
        except MessageRejected:
            pass


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(_CORPUS_PAYLOADS) - 1),
    edits=st.lists(
        st.tuples(
            st.floats(0, 1),
            st.integers(0, 8),
            st.binary(max_size=4)
            | st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\x0b", b"\xff"]),
        ),
        max_size=6,
    ),
)
def test_mutated_corpus_messages_only_ever_raise_message_rejected(
    index: int, edits: list[tuple[float, int, bytes]]
) -> None:
    payload = bytearray(_CORPUS_PAYLOADS[index])
    for where, delete, insert in edits:
        at = int(where * len(payload))
        payload[at : at + delete] = insert
    try:
        decoded = _decode(bytes(payload))
    except MessageRejected as rejection:
        assert rejection.ack_code in ("AR", "AE")
        assert rejection.error_code.isdigit()
    else:
        decoded.field("PID", 5)
        decoded.field("MSH", 9, 2)


@pytest.mark.parametrize(
    ("message", "condition"),
    [
        (b"MSH|^~\\&|A|B|C|D|20260101||ADT^A40|1|P|2.8|||NE|NE\rEVN|A40\r", "NE"),
        (b"\xef\xbb\xbfMSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5|||er\nEVN|A01\n", "ER"),
        (b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\rEVN|A01\r", ""),
        (b"PID|1||123\r", ""),
        (b"MSH", ""),
    ],
)
def test_accept_ack_condition_is_msh15_as_a_sender_reads_it(message: bytes, condition: str) -> None:
    assert accept_ack_condition(message) == condition
