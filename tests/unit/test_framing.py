"""MLLP framing: the decoder is a pure function of the byte stream, tested without a network."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.hl7v2.framing import (
    END_BLOCK,
    START_BLOCK,
    BadFrame,
    Frame,
    MllpDecoder,
    encode_frame,
)

ADVERSARIAL = Path(__file__).parents[1] / "fixtures" / "corpus" / "adversarial"

MSG_A = b"MSH|^~\\&|LIS|LAB|EHR|HOSP|20260101||ORU^R01|A1|P|2.5.1\rPID|1\r"
MSG_B = b"MSH|^~\\&|LIS|LAB|EHR|HOSP|20260101||ORU^R01|B2|P|2.5.1\rPID|2\r"


def test_encode_frame_wraps_in_block_characters() -> None:
    assert encode_frame(b"MSH|x") == b"\x0bMSH|x\x1c\x0d"
    assert START_BLOCK == b"\x0b"
    assert END_BLOCK == b"\x1c\x0d"


def test_several_messages_in_one_read() -> None:
    decoder = MllpDecoder(max_frame_bytes=1024)
    assert decoder.feed(encode_frame(MSG_A) + encode_frame(MSG_B)) == [Frame(MSG_A), Frame(MSG_B)]
    assert decoder.pending_bytes == 0


def test_one_message_over_several_reads_including_split_end_block() -> None:
    decoder = MllpDecoder(max_frame_bytes=1024)
    stream = encode_frame(MSG_A)
    assert decoder.feed(stream[:10]) == []
    assert decoder.feed(stream[10:-1]) == []
    assert decoder.pending_bytes == len(MSG_A) + 1
    assert decoder.feed(stream[-1:]) == [Frame(MSG_A)]
    assert decoder.pending_bytes == 0


def test_garbage_before_start_block_is_returned_for_quarantine() -> None:
    decoder = MllpDecoder(max_frame_bytes=1024)
    out = decoder.feed(b"GET / HTTP/1.1\r\n" + encode_frame(MSG_A))
    assert out == [BadFrame(b"GET / HTTP/1.1\r\n", "bytes outside a frame"), Frame(MSG_A)]


def test_whitespace_between_frames_is_ignored() -> None:
    decoder = MllpDecoder(max_frame_bytes=1024)
    out = decoder.feed(encode_frame(MSG_A) + b"\r\n" + encode_frame(MSG_B) + b"\n")
    assert out == [Frame(MSG_A), Frame(MSG_B)]
    assert decoder.close() == []


def test_embedded_start_byte_refuses_the_whole_frame_once() -> None:
    payload = (ADVERSARIAL / "embedded-mllp-start-byte.hl7").read_bytes()
    assert payload.count(START_BLOCK) == 1
    decoder = MllpDecoder(max_frame_bytes=65536)
    out = decoder.feed(encode_frame(payload) + encode_frame(MSG_B))
    # One answer per end block: the sender's next message is unaffected.
    assert out == [BadFrame(payload, "start block inside an open frame"), Frame(MSG_B)]


def test_embedded_start_byte_detected_across_reads() -> None:
    decoder = MllpDecoder(max_frame_bytes=1024)
    stream = encode_frame(b"MSH|a\x0bb") + encode_frame(MSG_A)
    out: list[Frame | BadFrame] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == [BadFrame(b"MSH|a\x0bb", "start block inside an open frame"), Frame(MSG_A)]


def test_frame_too_large_yields_one_bad_frame_then_recovers() -> None:
    decoder = MllpDecoder(max_frame_bytes=16)
    big = b"MSH|" + b"x" * 100
    out = decoder.feed(START_BLOCK + big[:50])
    assert out == [BadFrame(big[:16], "frame too large")]
    assert decoder.feed(big[50:]) == []
    assert decoder.pending_bytes <= 1
    assert decoder.feed(END_BLOCK + encode_frame(b"MSH|ok")) == [Frame(b"MSH|ok")]


def test_frame_too_large_within_one_read() -> None:
    decoder = MllpDecoder(max_frame_bytes=8)
    out = decoder.feed(encode_frame(b"0123456789") + encode_frame(b"MSH|ok"))
    assert out == [BadFrame(b"01234567", "frame too large"), Frame(b"MSH|ok")]


def test_frame_of_exactly_max_bytes_is_accepted() -> None:
    decoder = MllpDecoder(max_frame_bytes=6)
    stream = encode_frame(b"MSH|ok")
    assert decoder.feed(stream[:-1]) == []
    assert decoder.feed(stream[-1:]) == [Frame(b"MSH|ok")]


def test_close_mid_frame_returns_the_truncated_frame() -> None:
    decoder = MllpDecoder(max_frame_bytes=1024)
    assert decoder.feed(START_BLOCK + MSG_A[:20]) == []
    assert decoder.close() == [BadFrame(MSG_A[:20], "stream ended inside a frame")]
    assert decoder.pending_bytes == 0


def test_two_frames_sharing_a_control_id_are_two_frames() -> None:
    # same-control-id-twice holds two messages separated by an end block; framing keeps them
    # apart, deduplication by sending facility + MSH-10 is the gateway's/workflow's job.
    raw = (ADVERSARIAL / "same-control-id-twice.hl7").read_bytes()
    messages = [m for m in raw.split(END_BLOCK) if m]
    decoder = MllpDecoder(max_frame_bytes=65536)
    out = decoder.feed(b"".join(encode_frame(m) for m in messages))
    assert out == [Frame(m) for m in messages]
    assert len(out) == 2


_message = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))


@settings(max_examples=300)
@given(messages=st.lists(_message, max_size=6), data=st.data())
def test_any_split_of_a_stream_yields_exactly_the_messages(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = MllpDecoder(max_frame_bytes=300)
    out: list[Frame | BadFrame] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[previous:cut])
        previous = cut
    assert out == [Frame(m) for m in messages]
    assert decoder.pending_bytes == 0


@settings(max_examples=500)
@given(
    chunks=st.lists(
        st.binary(max_size=80)
        | st.sampled_from([START_BLOCK, END_BLOCK, b"\x1c", b"\x0d", b"MSH|"]),
        max_size=30,
    ),
    max_frame_bytes=st.integers(1, 64),
)
def test_arbitrary_bytes_never_raise_and_stay_bounded(
    chunks: list[bytes], max_frame_bytes: int
) -> None:
    decoder = MllpDecoder(max_frame_bytes=max_frame_bytes)
    for chunk in chunks:
        for item in decoder.feed(chunk):
            payload = item.payload if isinstance(item, Frame) else item.raw
            assert len(payload) <= max_frame_bytes
        assert decoder.pending_bytes <= max_frame_bytes + 2
    for item in decoder.close():
        assert isinstance(item, BadFrame)
        assert len(item.raw) <= max_frame_bytes
