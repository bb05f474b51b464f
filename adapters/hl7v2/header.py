"""The gateway's fast path: decode one HL7 v2 message and read its MSH before committing.

Plain string splitting only (no hl7apy): this runs for every inbound frame before the
gateway asks Temporal to start anything, so it must stay well under a millisecond. It
decides AR/AE for messages that cannot be accepted at all; the full parse, the mapping
and order matching are later layers.

Exception texts name segments and fields, never values: they end up in ACKs, logs and
Temporal failures, which must carry no patient data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from adapters.hl7v2 import fields
from adapters.hl7v2.fields import Delimiters, Segment
from models.errors import Hl7Error

_BOM = b"\xef\xbb\xbf"
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_UUID_SHAPE = re.compile(
    r"[0-9A-Za-z]{8}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{12}"
)
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# HL7 table 0155 (accept/application acknowledgment conditions).
_ACK_CONDITIONS = frozenset({"", "AL", "NE", "ER", "SU"})
# ST is at most 199 characters from v2.7 on; a control id is also a key for idempotency.
_MAX_CONTROL_ID = 199

# HL7 table 0211 (MSH-18 alternate character sets) plus aliases seen in the wild, mapped to
# Python codecs. Only ASCII-compatible sets: MSH itself must be readable before decoding.
_CHARSETS: dict[str, str] = {
    "": "utf-8",
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "US-ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "ISO IR100": "iso-8859-1",
    "ISO-8859-1": "iso-8859-1",
    "ISO8859-1": "iso-8859-1",
    "LATIN1": "iso-8859-1",
    "LATIN-1": "iso-8859-1",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc-kr",
    **{f"8859/{n}": f"iso-8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15)},
    **{f"ISO-8859-{n}": f"iso-8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15)},
}

# Segments without which a message of that type cannot be processed at all (abstract
# message syntax of v2.5.1, kept to the exchanges' message types). A missing one is an
# application error (AE, HL7 0357 code 100) naming the segment, never a half-read message.
REQUIRED_SEGMENTS: Mapping[str, tuple[str, ...]] = {
    "ORU^R01": ("OBR",),
    "OML^O21": ("ORC",),
    "ORM^O01": ("ORC",),
    "OUL^R22": ("SPM",),
    "ADT^A01": ("PID",),
    "ADT^A03": ("PID",),
    "ADT^A04": ("PID",),
    "ADT^A08": ("PID",),
    "ADT^A13": ("PID",),
    "ADT^A40": ("PID", "MRG"),
}

# Last required field of common segments. Checked on the LAST segment only: a message cut
# in transit ends in a segment shorter than HL7 allows (the corpus's truncated-mid-segment).
_MIN_FIELDS: Mapping[str, int] = {
    "PID": 3,
    "PV1": 2,
    "ORC": 1,
    "OBR": 4,
    "OBX": 3,
    "SPM": 4,
    "MRG": 1,
    "EVN": 2,
}

# HL7 table 0357 (message error condition codes), v2.5.1 and the 104 added in v2.6.
_ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


def error_description(error_code: str) -> str:
    """The HL7 table 0357 description of an error code."""
    return _ERROR_TEXT.get(error_code, "Application error")


@dataclass(frozen=True)
class MessageHeader:
    """MSH fields the gateway needs before committing, as sent (not unescaped).

    HD fields (MSH-3..6) keep the namespace id (first component); MSH-9 is split into
    code, trigger event and structure. Absent fields are "".
    """

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_code: str
    trigger_event: str
    message_structure: str
    control_id: str
    processing_id: str
    version_id: str
    accept_ack_type: str
    application_ack_type: str
    character_set: str

    @property
    def message_type(self) -> str:
        """MSH-9.1^MSH-9.2, e.g. "ORU^R01"."""
        return f"{self.message_code}^{self.trigger_event}"


class MessageRejected(Hl7Error):
    """The message cannot be accepted; carries what the ACK's MSA and ERR segments need."""

    def __init__(
        self,
        ack_code: str,
        error_code: str,
        text: str,
        *,
        segment_id: str = "MSH",
        segment_sequence: int = 1,
        field_position: int | None = None,
        header: MessageHeader | None = None,
    ) -> None:
        super().__init__(f"{ack_code} {error_code}: {text}")
        self.ack_code = ack_code
        self.error_code = error_code
        self.text = text
        self.segment_id = segment_id
        self.segment_sequence = segment_sequence
        self.field_position = field_position
        self.header = header


def unescape(value: str, encoding_characters: str, *, field_separator: str = "|") -> str:
    """``fields.unescape`` for a value whose delimiters are given as MSH-2 (and MSH-1).

    Delimiter and hex escapes are resolved; formatting and character-set escapes and any
    unknown or unterminated sequence are kept verbatim. Without four encoding characters
    nothing can be resolved and the value is returned as is.
    """
    if len(encoding_characters) < 4:
        return value
    return fields.unescape(value, Delimiters.of(field_separator, encoding_characters))


@dataclass(frozen=True)
class DecodedMessage:
    """A message that passed the fast path: decoded text, its header, and what was normalized."""

    text: str
    header: MessageHeader
    segments: tuple[str, ...]
    normalizations: tuple[str, ...]

    def segments_named(self, segment_id: str) -> list[str]:
        """Every segment with this id, in message order."""
        separator = self.header.field_separator
        return [s for s in self.segments if s[:3] == segment_id and _id_ends(s, separator)]

    @cached_property
    def delimiters(self) -> Delimiters:
        """The delimiters the message was read with (MSH-1, MSH-2 as normalized)."""
        return Delimiters.of(self.header.field_separator, self.header.encoding_characters)

    def field(self, segment_id: str, position: int, component: int = 1, occurrence: int = 1) -> str:
        """Unescaped value of the first such segment's field/component ("" when absent).

        For MSH, position 1 is the field separator itself and 2 the encoding characters
        (returned whole, never split or unescaped). Read with ``fields.Segment.value``.
        """
        separator = self.header.field_separator
        for segment in self.segments:
            if segment[:3] == segment_id and _id_ends(segment, separator):
                return Segment(segment, self.delimiters).value(position, component, occurrence)
        return ""


def _id_ends(segment: str, field_separator: str) -> bool:
    return len(segment) == 3 or segment[3] == field_separator


def _version_supported(version: str, supported: frozenset[str]) -> bool:
    # A point release belongs to its family: "2.5.1" is accepted when "2.5" is supported
    # (HL7 keeps point releases backward compatible); "2.5" is not accepted for "2.5.1".
    return any(version == s or version.startswith(s + ".") for s in supported)


def _reject(
    ack_code: str,
    error_code: str,
    text: str,
    *,
    segment_id: str = "MSH",
    segment_sequence: int = 1,
    field_position: int | None = None,
    header: MessageHeader | None = None,
) -> MessageRejected:
    return MessageRejected(
        ack_code,
        error_code,
        text,
        segment_id=segment_id,
        segment_sequence=segment_sequence,
        field_position=field_position,
        header=header,
    )


def _encoding_characters(raw: str, field_separator: str) -> tuple[str, str | None]:
    """Effective MSH-2 and the normalization applied, or ("", None) when unusable."""
    normalization = None
    chars = raw
    if len(chars) == 5 and chars[2] == chars[3]:
        # Samples copied from source code carry the escape character doubled ("^~\\&").
        chars = chars[:3] + chars[4]
        normalization = "doubled escape character in MSH-2 read as one"
    delimiters = chars[:4]
    # Four delimiters, plus the v2.7+ truncation character as an optional fifth.
    if len(chars) not in (4, 5) or len(set(chars + field_separator)) != len(chars) + 1:
        return "", None
    if any(c.isalnum() or c.isspace() for c in delimiters):
        return "", None
    return chars, normalization


def _header_from(segment: str) -> tuple[MessageHeader | None, list[str]]:
    """Read MSH into a header and the facts noted; (None, []) when MSH-1/MSH-2 are unusable."""
    if len(segment) < 8:
        return None, []
    separator = segment[3]
    if separator.isalnum() or separator.isspace():
        return None, []
    encoding, normalization = _encoding_characters(segment.split(separator, 2)[1], separator)
    if not encoding:
        return None, []
    facts = [normalization] if normalization else []
    msh = Segment(segment, Delimiters.of(separator, encoding))
    character_set = msh.raw(18)
    misplaced = msh.component(19)
    if not character_set and misplaced.strip().upper() in _CHARSETS and misplaced.strip():
        # A table 0211 value is never a language code (MSH-19), so a sender that shifted
        # MSH-18 by one field still told us its character set.
        character_set = misplaced
        facts.append("character set read from MSH-19 (MSH-18 empty)")
    header = MessageHeader(
        field_separator=separator,
        encoding_characters=encoding,
        sending_application=msh.component(3),
        sending_facility=msh.component(4),
        receiving_application=msh.component(5),
        receiving_facility=msh.component(6),
        message_code=msh.component(9, 1),
        trigger_event=msh.component(9, 2),
        message_structure=msh.component(9, 3),
        control_id=msh.field(10),
        processing_id=msh.component(11),
        version_id=msh.component(12),
        accept_ack_type=msh.field(15),
        application_ack_type=msh.field(16),
        character_set=character_set,
    )
    return header, facts


def accept_ack_condition(message: bytes) -> str:
    """MSH-15 of a message as a sender sees it ("" when unset or MSH is unreadable).

    A sender uses it to know whether to wait for an answer: NE means the receiver never
    answers, ER only on error, SU only on success, empty or AL always.
    """
    first_segment = re.split(rb"[\r\n]", message.removeprefix(_BOM), maxsplit=1)[0]
    if not first_segment.startswith(b"MSH"):
        return ""
    header, _ = _header_from(first_segment.decode("latin-1").rstrip(" \t"))
    return header.accept_ack_type.strip().upper() if header else ""


def _read_header(msh: str) -> tuple[MessageHeader, list[str]]:
    """Header from the first segment read as Latin-1, for rejections made before decoding."""
    header, facts = _header_from(msh)
    if header is None:
        raise _reject("AR", "102", "MSH-1/MSH-2 do not define usable delimiters", field_position=2)
    return header, facts


def _decode(
    body: bytes, header: MessageHeader, fallback_charset: str | None, facts: list[str]
) -> str:
    declared = header.character_set.strip().upper()
    codec = _CHARSETS.get(declared)
    if codec is None:
        raise _reject(
            "AE",
            "102",
            "MSH-18 names an unsupported character set",
            field_position=18,
            header=header,
        )
    try:
        return body.decode(codec)
    except UnicodeDecodeError:
        pass
    if not declared and fallback_charset:
        try:
            text = body.decode(fallback_charset)
        except (UnicodeDecodeError, LookupError):
            pass
        else:
            facts.append(f"decoded as {fallback_charset} (no MSH-18, not valid UTF-8)")
            return text
    where = "the character set MSH-18 declares" if declared else "UTF-8 (MSH-18 is empty)"
    raise _reject(
        "AE", "102", f"message bytes are not valid {where}", field_position=18, header=header
    )


def _control_id_malformed(control_id: str, component: str) -> bool:
    if len(control_id) > _MAX_CONTROL_ID or not control_id.isprintable():
        return True
    if component in control_id or control_id != control_id.strip():
        return True
    # A control id shaped as a UUID must be one: a non-hex digit means it was corrupted or
    # generated wrongly, and the gateway keys idempotency on it (sending facility + MSH-10).
    return bool(_UUID_SHAPE.fullmatch(control_id)) and not _UUID.fullmatch(control_id)


def decode_message(
    payload: bytes,
    *,
    supported_types: Mapping[str, frozenset[str]],
    supported_versions: frozenset[str],
    fallback_charset: str | None = None,
    required_segments: Mapping[str, tuple[str, ...]] = REQUIRED_SEGMENTS,
) -> DecodedMessage:
    """Decode one message (one MLLP frame's payload) and check what the gateway must check.

    ``supported_types`` maps MSH-9.1 to the allowed MSH-9.2 events; ``supported_versions``
    holds version ids, each also admitting its point releases ("2.5" admits "2.5.1").
    ``required_segments`` maps "CODE^EVENT" to segments that must be present.
    Raises ``MessageRejected`` (and nothing else) when the message cannot be accepted.
    """
    facts: list[str] = []
    if payload.startswith(_BOM):
        payload = payload[len(_BOM) :]
        facts.append("utf-8 BOM stripped")
    if not payload.strip():
        raise _reject("AR", "100", "empty message: no MSH segment")
    if b"\n" in payload:
        if b"\r\n" in payload:
            payload = payload.replace(b"\r\n", b"\r")
            facts.append("CRLF separators normalized to CR")
        if b"\n" in payload:
            payload = payload.replace(b"\n", b"\r")
            facts.append("LF separators normalized to CR")

    first_end = payload.find(b"\r")
    first_segment = payload if first_end == -1 else payload[:first_end]
    leading = first_segment[:3]
    if leading in (b"BHS", b"FHS"):
        raise _reject(
            "AR",
            "100",
            f"{leading.decode()} batch envelope: batch import is not supported on this "
            "interface; send one message per frame",
            segment_id=leading.decode(),
        )
    if leading != b"MSH":
        raise _reject("AR", "100", "message does not start with an MSH segment")
    provisional_msh = first_segment.decode("latin-1").rstrip(" \t")
    provisional, provisional_facts = _read_header(provisional_msh)
    text = _decode(payload, provisional, fallback_charset, facts)

    lines = text.split("\r")
    stripped = [line.rstrip(" \t") for line in lines]
    if any(s != line for s, line in zip(stripped, lines, strict=True)):
        facts.append("trailing blanks removed")
    segments = [s for s in stripped if s]
    if len(segments) != len(stripped) - (1 if text.endswith("\r") else 0):
        facts.append("empty segments dropped")

    # Usually (an ASCII MSH) the decoded MSH is the text the provisional header was read
    # from, and a header is a function of that text alone: reading it once keeps the ACK
    # path short.
    header: MessageHeader | None = provisional
    header_facts = provisional_facts
    if segments[0] != provisional_msh:
        header, header_facts = _header_from(segments[0])
    if header is None:  # pragma: no cover - same bytes as the provisional header
        raise _reject("AR", "102", "MSH-1/MSH-2 do not define usable delimiters", field_position=2)
    facts += header_facts
    sep = header.field_separator
    declared_encoding = segments[0].split(sep, 2)[1]
    if declared_encoding != header.encoding_characters:
        # The lab and ADT parsers read MSH-2 again: give them the delimiters we used.
        segments[0] = sep.join(("MSH", header.encoding_characters, *segments[0].split(sep)[2:]))
    _check_segments(segments, header, block_chars="\x0b" in text or "\x1c" in text)
    _check_header(header, supported_types, supported_versions)
    _check_structure(segments, header, required_segments)
    return DecodedMessage(
        text="\r".join(segments),
        header=header,
        segments=tuple(segments),
        normalizations=tuple(facts),
    )


def _check_segments(segments: list[str], header: MessageHeader, *, block_chars: bool) -> None:
    separator = header.field_separator
    if len(segments) == 1:
        # Segments run together on one line look like one long MSH: no guessing where
        # they end (adt-a01-nodehl7complete-oneline-1).
        raise _reject(
            "AR",
            "100",
            "message has no segment after MSH (segment separators missing?)",
            header=header,
        )
    for sequence, segment in enumerate(segments, start=1):
        segment_id = segment[:3]
        for block_char in ("\x0b", "\x1c") if block_chars else ():
            at = segment.find(block_char)
            if at != -1:
                raise _reject(
                    "AR",
                    "102",
                    f"{segment_id} segment {sequence} contains an MLLP block character",
                    segment_id=segment_id,
                    segment_sequence=sequence,
                    field_position=segment.count(separator, 0, at) + (segment_id == "MSH") or None,
                    header=header,
                )
        if sequence == 1:
            continue
        if not _SEGMENT_ID.fullmatch(segment_id) or not _id_ends(segment, separator):
            # Typically a segment wrapped mid-field by a line break; the id is not named
            # because the broken line starts with message content.
            raise _reject(
                "AE",
                "100",
                f"segment {sequence} does not start with a segment id "
                f"(segment {sequence - 1} is {segments[sequence - 2][:3]}, wrapped?)",
                segment_id="",
                segment_sequence=sequence,
                header=header,
            )
        if segment_id == "MSH":
            raise _reject(
                "AR",
                "100",
                f"second MSH at segment {sequence}: one frame carries one message",
                segment_id="MSH",
                segment_sequence=sequence,
                header=header,
            )
        if segment_id in ("BHS", "FHS", "BTS", "FTS"):
            raise _reject(
                "AR",
                "100",
                f"{segment_id} batch segment at segment {sequence}: batch import is not "
                "supported on this interface",
                segment_id=segment_id,
                segment_sequence=sequence,
                header=header,
            )


def _check_header(
    header: MessageHeader,
    supported_types: Mapping[str, frozenset[str]],
    supported_versions: frozenset[str],
) -> None:
    if not header.message_code:
        raise _reject("AR", "101", "MSH-9 message type is missing", field_position=9, header=header)
    if not header.control_id:
        raise _reject(
            "AR", "101", "MSH-10 message control id is missing", field_position=10, header=header
        )
    if _control_id_malformed(header.control_id, header.encoding_characters[0]):
        raise _reject(
            "AR",
            "102",
            "MSH-10 message control id is malformed",
            field_position=10,
            header=header,
        )
    if not header.version_id:
        raise _reject("AR", "101", "MSH-12 version id is missing", field_position=12, header=header)
    if not _version_supported(header.version_id, supported_versions):
        raise _reject(
            "AR",
            "203",
            "MSH-12 version id is not supported on this interface",
            field_position=12,
            header=header,
        )
    for position, value in ((15, header.accept_ack_type), (16, header.application_ack_type)):
        if value not in _ACK_CONDITIONS:
            raise _reject(
                "AR",
                "102",
                f"MSH-{position} is not an HL7 table 0155 value",
                field_position=position,
                header=header,
            )
    events = supported_types.get(header.message_code)
    if events is None:
        raise _reject(
            "AR",
            "200",
            "MSH-9 message type is not supported on this interface",
            field_position=9,
            header=header,
        )
    if header.trigger_event not in events:
        raise _reject(
            "AR",
            "201",
            "MSH-9 trigger event is not supported on this interface",
            field_position=9,
            header=header,
        )


def _check_structure(
    segments: list[str], header: MessageHeader, required: Mapping[str, tuple[str, ...]]
) -> None:
    present = {s[:3] for s in segments}
    for segment_id in required.get(header.message_type, ()):
        if segment_id not in present:
            raise _reject(
                "AE",
                "100",
                f"required {segment_id} segment is missing for {header.message_type}",
                segment_id=segment_id,
                segment_sequence=len(segments),
                header=header,
            )
    last = segments[-1]
    last_id = last[:3]
    needed = _MIN_FIELDS.get(last_id)
    if needed is not None and last.count(header.field_separator) < needed:
        raise _reject(
            "AR",
            "101",
            f"last segment {last_id} ends before required field {last_id}-{needed}: "
            "message looks truncated",
            segment_id=last_id,
            segment_sequence=len(segments),
            field_position=needed,
            header=header,
        )
