"""Reading an HL7 v2 batch file: the messages an EHR kept during its downtime.

A file is FHS, BHS ... BTS, FTS (HL7 v2 chapter 2, batch protocol), or BHS ... BTS alone,
or plain concatenated messages; lines end in CR, LF or CRLF, and there may be a UTF-8 BOM
and blank lines between messages. Each message keeps the file line of its MSH, and is
checked with the gateway's own decoder so a message refused here is refused for the
reason the MLLP gateway would give. The trailers' counts (BTS-1 messages in the batch,
FTS-1 batches in the file) are compared with what the file holds: a mismatch means the
file is not what its sender wrote, and the caller decides what to do about it.

Pure bytes in, values out: no I/O, no Temporal. Texts name lines, segments and fields,
never values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from adapters.hl7v2 import fields
from adapters.hl7v2.header import DecodedMessage, MessageRejected

_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_ENVELOPE = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})

Decoder = Callable[[bytes], DecodedMessage]
"""Decodes one message or raises ``MessageRejected`` (the gateway's ``decode_message``
with the interface's supported types and versions bound)."""


@dataclass(frozen=True)
class BatchMessage:
    """A message the gateway's decoder accepted, with where it is and when it happened."""

    line: int  # file line of its MSH (1-based, blank lines counted)
    file_position: int  # 0-based among every message and bad message of the file
    raw: bytes  # segments separated by CR, ending in CR
    decoded: DecodedMessage
    sent_at: datetime  # MSH-7, timezone-aware
    local_time_assumed: bool  # MSH-7 had no offset: read in the configured zone

    @property
    def message_type(self) -> str:
        return self.decoded.header.message_type


@dataclass(frozen=True)
class BadMessage:
    """A message (or lines outside any message) that cannot be applied."""

    line: int
    file_position: int
    raw: bytes
    rejection: MessageRejected

    @property
    def reason(self) -> str:
        return self.rejection.text

    @property
    def message_type(self) -> str:
        header = self.rejection.header
        return header.message_type if header else ""


@dataclass(frozen=True)
class TrailerProblem:
    """An envelope that does not add up: a count that differs, a header without trailer."""

    line: int  # the trailer's line, or the header's when the trailer is missing
    segment: str  # BTS, FTS, BHS or FHS
    text: str


@dataclass(frozen=True)
class BatchFile:
    messages: tuple[BatchMessage, ...]  # file order
    bad_messages: tuple[BadMessage, ...]  # file order
    trailer_problems: tuple[TrailerProblem, ...]
    batch_count: int  # BHS segments seen
    local_zone: tzinfo  # where an MSH-7 without offset was read

    def in_clinical_order(self) -> list[BatchMessage]:
        """By MSH-7 (offsets honoured), then file order for messages of the same second."""
        return sorted(self.messages, key=lambda m: (m.sent_at.astimezone(UTC), m.file_position))

    @property
    def local_times(self) -> int:
        """How many messages had an MSH-7 without offset."""
        return sum(m.local_time_assumed for m in self.messages)


def _segment_id(line: bytes) -> bytes:
    # An envelope or MSH segment id is followed by its field separator (or nothing).
    head = line[:3]
    if len(line) > 3 and (chr(line[3]).isalnum() or chr(line[3]).isspace()):
        return b""
    return head


def _count_field(line: bytes, separator: bytes) -> int | str | None:
    """BTS-1 / FTS-1: the count, None when not given, or the reason it cannot be read."""
    parts = line.rstrip(b" \t").split(separator)
    value = parts[1].strip() if len(parts) > 1 else b""
    if not value:
        return None
    if not value.isdigit():
        return "is not a number"
    return int(value)


@dataclass
class _Chunk:
    line: int
    lines: list[bytes]


@dataclass
class _Envelope:
    line: int  # its header's line
    separator: bytes  # BHS-1 / FHS-1: its trailer is written with it
    contents: int = 0  # messages in a batch, batches in a file


class _Reader:
    def __init__(self, decode: Decoder, local_zone: tzinfo) -> None:
        self._decode = decode
        self._local_zone = local_zone
        self.messages: list[BatchMessage] = []
        self.bad: list[BadMessage] = []
        self.problems: list[TrailerProblem] = []
        self.batches = 0
        self._chunk: _Chunk | None = None
        self._file: _Envelope | None = None
        self._batch: _Envelope | None = None

    def read(self, data: bytes) -> None:
        for number, line in enumerate(_LINE_END.split(data), start=1):
            # A BOM starts the file, or each file of a concatenation.
            line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            segment_id = _segment_id(line)
            if segment_id == b"MSH":
                self._flush()
                self._chunk = _Chunk(number, [line])
                if self._batch is not None:
                    self._batch.contents += 1
            elif segment_id in _ENVELOPE:
                self._flush()
                self._envelope(segment_id.decode(), number, line)
            elif self._chunk is not None:
                self._chunk.lines.append(line)
            else:
                # Segments before any MSH (bad-batch-pythonhl7-1: a BHS with no MSH inside):
                # kept as one piece so they are reported and quarantined, not dropped.
                self._chunk = _Chunk(number, [line])
        self._flush()
        if self._batch is not None:
            self._missing_trailer(self._batch, "BHS", "BTS")
        if self._file is not None:
            self._missing_trailer(self._file, "FHS", "FTS")

    def _envelope(self, segment_id: str, number: int, line: bytes) -> None:
        separator = line[3:4] or b"|"
        if segment_id == "FHS":
            if self._file is not None:
                self._missing_trailer(self._file, "FHS", "FTS")
            self._file = _Envelope(number, separator)
        elif segment_id == "BHS":
            if self._batch is not None:
                self._missing_trailer(self._batch, "BHS", "BTS")
            self._batch = _Envelope(number, separator)
            self.batches += 1
            if self._file is not None:
                self._file.contents += 1
        elif segment_id == "BTS":
            if self._batch is None:
                self.problems.append(TrailerProblem(number, "BTS", "BTS without a BHS before it"))
                return
            self._check_count(number, "BTS", line, self._batch, "message(s)", "batch")
            self._batch = None
        else:  # FTS
            if self._batch is not None:
                self._missing_trailer(self._batch, "BHS", "BTS")
                self._batch = None
            if self._file is None:
                self.problems.append(TrailerProblem(number, "FTS", "FTS without an FHS before it"))
                return
            self._check_count(number, "FTS", line, self._file, "batch(es)", "file")
            self._file = None

    def _check_count(
        self, number: int, trailer: str, line: bytes, envelope: _Envelope, unit: str, whole: str
    ) -> None:
        count = _count_field(line, envelope.separator)
        if isinstance(count, str):
            self.problems.append(TrailerProblem(number, trailer, f"{trailer}-1 {count}"))
        elif count is not None and count != envelope.contents:
            self.problems.append(
                TrailerProblem(
                    number,
                    trailer,
                    f"{trailer}-1 says {count} {unit}, the {whole} opened at line "
                    f"{envelope.line} holds {envelope.contents}",
                )
            )

    def _missing_trailer(self, envelope: _Envelope, header: str, trailer: str) -> None:
        self.problems.append(
            TrailerProblem(
                envelope.line,
                header,
                f"{header} at line {envelope.line} has no {trailer} (file cut short?)",
            )
        )

    def _flush(self) -> None:
        chunk, self._chunk = self._chunk, None
        if chunk is None:
            return
        position = len(self.messages) + len(self.bad)
        raw = b"\r".join(chunk.lines) + b"\r"
        try:
            decoded = self._decode(raw)
        except MessageRejected as rejection:
            self.bad.append(BadMessage(chunk.line, position, raw, rejection))
            return
        msh = fields.Segment(decoded.segments[0], decoded.delimiters)
        sent_at = fields.timestamp(msh.raw(7), decoded.delimiters)
        if sent_at is None:
            unordered = MessageRejected(
                "AR",
                "101" if not msh.raw(7).strip() else "102",
                "MSH-7 date/time of message is missing or unreadable: the message cannot be "
                "placed in clinical order",
                field_position=7,
                header=decoded.header,
            )
            self.bad.append(BadMessage(chunk.line, position, raw, unordered))
            return
        local = sent_at.tzinfo is None
        if local:
            sent_at = sent_at.replace(tzinfo=self._local_zone)
        self.messages.append(BatchMessage(chunk.line, position, raw, decoded, sent_at, local))


def read_batch_file(data: bytes, *, decode: Decoder, local_zone: tzinfo) -> BatchFile:
    """Every message of the file, every bad one with its line and reason, and every
    envelope problem. ``local_zone`` is where an MSH-7 without offset is read."""
    reader = _Reader(decode, local_zone)
    reader.read(data)
    return BatchFile(
        messages=tuple(reader.messages),
        bad_messages=tuple(reader.bad),
        trailer_problems=tuple(reader.problems),
        batch_count=reader.batches,
        local_zone=local_zone,
    )
