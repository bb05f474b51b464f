"""Property-based fuzzing of what a hostile sender reaches first: the MLLP decoder and the
HL7 fast path (header decode + routing, then the lab and ADT parsers the activities run).

Each parser may refuse input only with its declared error (MessageRejected,
LabMessageInvalid, AdtMessageInvalid, PersonMessageInvalid, MergeMessageInvalid); anything
else escaping is a crash the gateway or a worker would turn into a stuck connection or a
failed activity.
Inputs are arbitrary bytes and text plus mutations of the real messages in
tests/fixtures/corpus. Example counts are bounded so this file runs in well under half
a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2.adt_messages import AdtMessageInvalid, parse_adt_event
from adapters.hl7v2.framing import BadFrame, Frame, MllpDecoder, encode_frame
from adapters.hl7v2.header import MessageRejected, decode_message
from adapters.hl7v2.lab_messages import (
    LabMessageInvalid,
    parse_lab_orders,
    parse_lab_results,
    parse_patient,
)
from adapters.hl7v2.merge_messages import MergeMessageInvalid, parse_identity_message
from adapters.hl7v2.person_messages import PersonMessageInvalid, parse_person_update
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS

SUPPORTED_TYPES = REGISTRY.supported_types
REQUIRED_SEGMENTS = REGISTRY.required_segments
route = REGISTRY.route

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
MESSAGES = sorted(
    path.read_bytes() for path in CORPUS.rglob("*.hl7") if path.stat().st_size < 64 * 1024
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Bytes that mean something to MLLP or HL7: block characters, separators, delimiters.
SPECIAL = [b"\x0b", b"\x1c", b"\x1c\r", b"\r", b"\n", b"|", b"^", b"~", b"\\", b"&", b"MSH|"]


def test_the_corpus_is_there() -> None:
    assert len(MESSAGES) > 30


# --- MLLP framing ------------------------------------------------------------------------


def _decode_in_chunks(stream: bytes, cuts: list[int], max_frame_bytes: int) -> list[object]:
    decoder = MllpDecoder(max_frame_bytes)
    out: list[object] = []
    previous = 0
    for cut in [*sorted(cuts), len(stream)]:
        out += decoder.feed(stream[previous:cut])
        previous = cut
    out += decoder.close()
    return out


_stream = st.lists(
    st.binary(max_size=64) | st.sampled_from(SPECIAL) | st.sampled_from(MESSAGES).map(encode_frame),
    max_size=12,
).map(b"".join)


@FUZZ
@given(stream=_stream, data=st.data(), max_frame_bytes=st.integers(1, 4096))
def test_any_chunking_of_any_stream_gives_the_same_frames(
    stream: bytes, data: st.DataObject, max_frame_bytes: int
) -> None:
    whole = _decode_in_chunks(stream, [], max_frame_bytes)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=16))
    chunked = _decode_in_chunks(stream, cuts, max_frame_bytes)
    frames = [item for item in whole if isinstance(item, Frame)]
    assert [item for item in chunked if isinstance(item, Frame)] == frames
    # Refusals inside frames (too large, embedded start block) do not depend on reads either;
    # only how stray bytes outside any frame are cut up for quarantine may.
    in_frame = [i for i in whole if isinstance(i, BadFrame) and "outside" not in i.reason]
    assert [i for i in chunked if isinstance(i, BadFrame) and "outside" not in i.reason] == in_frame
    for item in chunked:
        assert isinstance(item, Frame | BadFrame)
        assert len(item.payload if isinstance(item, Frame) else item.raw) <= max_frame_bytes


@FUZZ
@given(messages=st.lists(st.sampled_from(MESSAGES), min_size=1, max_size=4), data=st.data())
def test_corpus_messages_survive_any_chunking(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=24))
    out = _decode_in_chunks(stream, cuts, 64 * 1024)
    # One answer per end block, whatever the reads, and the same answers as one read.
    assert len(out) == stream.count(b"\x1c\r")
    assert out == _decode_in_chunks(stream, [], 64 * 1024)
    if not any(b"\x0b" in m or b"\x1c" in m for m in messages):
        assert out == [Frame(m) for m in messages]


# --- the HL7 fast path -------------------------------------------------------------------


def _through_the_fast_path(payload: bytes, *, fallback_charset: str | None = None) -> None:
    """What the gateway and then the activities do with one frame's payload."""
    try:
        message = decode_message(
            payload,
            supported_types=SUPPORTED_TYPES,
            supported_versions=SUPPORTED_VERSIONS,
            fallback_charset=fallback_charset,
            required_segments=REQUIRED_SEGMENTS,
        )
        route(message, pseudonym_key=b"fuzz")
    except MessageRejected:
        return
    # The activity parser of the exchange the message was routed to.
    _through_the_parsers(message.text, message.header.message_code)


def _through_the_parsers(text: str, message_code: str | None = None) -> None:
    parsers = {
        "ORU": [parse_lab_results],
        "ORM": [parse_lab_orders],
        "OML": [parse_lab_orders],
        "ADT": [parse_adt_event, parse_person_update, parse_identity_message],
    }.get(
        message_code or "",
        [
            parse_lab_results,
            parse_lab_orders,
            parse_patient,
            parse_adt_event,
            parse_person_update,
            parse_identity_message,
        ],
    )
    for parse in parsers:
        try:
            parse(text)
        except (LabMessageInvalid, AdtMessageInvalid, PersonMessageInvalid, MergeMessageInvalid):
            pass


@FUZZ
@given(payload=st.binary(max_size=2048), charset=st.sampled_from([None, "iso-8859-1"]))
def test_arbitrary_bytes_through_the_fast_path(payload: bytes, charset: str | None) -> None:
    _through_the_fast_path(payload, fallback_charset=charset)
    _through_the_fast_path(b"MSH|^~\\&|" + payload, fallback_charset=charset)


_hl7ish_text = st.lists(
    st.text(max_size=40) | st.sampled_from([s.decode() for s in SPECIAL]), max_size=40
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=_hl7ish_text, prefix=st.sampled_from(["", "MSH|^~\\&|"]))
def test_arbitrary_text_through_the_parsers(text: str, prefix: str) -> None:
    _through_the_parsers(prefix + text)


def _mutate(message: bytes, edits: list[tuple[int, int, int, bytes]]) -> bytes:
    """Apply (kind, position, length, bytes) edits: delete, insert, overwrite, duplicate."""
    data = bytearray(message)
    for kind, position, length, inserted in edits:
        at = position % (len(data) + 1)
        if kind == 0:
            del data[at : at + length]
        elif kind == 1:
            data[at:at] = inserted
        elif kind == 2:
            data[at : at + len(inserted)] = inserted
        else:
            data[at:at] = data[at : at + length]
    return bytes(data)


_edits = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 1 << 16),
        st.integers(0, 40),
        st.sampled_from(SPECIAL) | st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=8,
)


@FUZZ
@given(
    message=st.sampled_from(MESSAGES),
    edits=_edits,
    charset=st.sampled_from([None, "cp1252"]),
)
def test_mutated_corpus_messages_through_the_fast_path(
    message: bytes, edits: list[tuple[int, int, int, bytes]], charset: str | None
) -> None:
    _through_the_fast_path(_mutate(message, edits), fallback_charset=charset)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m[:40].decode("latin-1"))
def test_every_corpus_message_through_the_fast_path(message: bytes) -> None:
    _through_the_fast_path(message, fallback_charset="iso-8859-1")
