"""HL7 v2 acknowledgments: build the gateway's ACK, decide whether to send one, read a peer's."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.hl7v2.fields import (
    Delimiters,
    Segment,
    at,
    delimiters_from_msh,
    read_segments,
    subcomponents,
    unescape,
)
from adapters.hl7v2.header import MessageHeader, MessageRejected, error_description
from models.errors import Hl7Error

_DEFAULT_VERSION = "2.5"
_DEFAULT_ENCODING = "^~\\&"
_SUCCESS_CODES = frozenset({"AA", "CA"})
_ERROR_CODES = frozenset({"AE", "AR", "CE", "CR"})


class AckParseError(Hl7Error, ValueError):
    """The text is not an HL7 ACK (no MSH or no MSA)."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in version.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def _escape(value: str, field_separator: str, encoding_characters: str) -> str:
    component, repetition, escape, subcomponent = (
        encoding_characters[0],
        encoding_characters[1],
        encoding_characters[2],
        encoding_characters[3],
    )
    out = value.replace(escape, f"{escape}E{escape}")
    for char, code in (
        (field_separator, "F"),
        (component, "S"),
        (subcomponent, "T"),
        (repetition, "R"),
    ):
        out = out.replace(char, f"{escape}{code}{escape}")
    for char, code in (("\r", "0D"), ("\n", "0A")):
        out = out.replace(char, f"{escape}X{code}{escape}")
    return out


def build_ack(
    header: MessageHeader | None,
    ack_code: str,
    *,
    rejection: MessageRejected | None = None,
    ack_control_id: str,
    timestamp: str,
) -> str:
    """The ACK for an inbound message, segments joined by CR.

    Applications and facilities are swapped, delimiters, MSH-11 and MSH-12 are the inbound
    message's (v2.5 and ``|^~\\&`` when MSH was unreadable). With a rejection, MSA-3 carries
    its text (v2.3 style) and an ERR segment locates it: ERR-1 before v2.5, ERR-2/3/4 from v2.5.
    """
    sep = header.field_separator if header else "|"
    enc = header.encoding_characters if header else _DEFAULT_ENCODING
    component = enc[0]
    version = (header.version_id if header else "") or _DEFAULT_VERSION
    processing_id = (header.processing_id if header else "") or "P"
    trigger = header.trigger_event if header else ""
    before_231 = _version_tuple(version) < (2, 3, 1)
    # MSH-9.3 (message structure) exists from v2.3.1 on.
    message_type = (
        f"ACK{component}{trigger}" if before_231 else f"ACK{component}{trigger}{component}ACK"
    )
    msh = [
        "MSH",
        enc,
        header.receiving_application if header else "",
        header.receiving_facility if header else "",
        header.sending_application if header else "",
        header.sending_facility if header else "",
        timestamp,
        "",
        message_type,
        ack_control_id,
        processing_id,
        version,
    ]
    msa = ["MSA", ack_code, header.control_id if header else ""]
    segments = [sep.join(msh)]
    if rejection is None:
        segments.append(sep.join(msa))
        return "\r".join(segments)

    def esc(value: str) -> str:
        return _escape(value, sep, enc)

    msa.append(esc(rejection.text))
    segments.append(sep.join(msa))
    field = "" if rejection.field_position is None else str(rejection.field_position)
    location = component.join((esc(rejection.segment_id), str(rejection.segment_sequence), field))
    description = esc(error_description(rejection.error_code))
    if _version_tuple(version) < (2, 5):
        # v2.3/v2.4 ERR-1 is ELD: segment^sequence^field^code (CE, as subcomponents).
        sub = enc[3]
        code = sub.join((rejection.error_code, description, "HL70357"))
        segments.append(sep.join(("ERR", component.join((location, code)))))
    else:
        code = component.join((rejection.error_code, description, "HL70357"))
        err = ["ERR", "", location, code, "E", "", "", "", esc(rejection.text)]
        segments.append(sep.join(err))
    return "\r".join(segments)


def ack_required(header: MessageHeader, ack_code: str) -> bool:
    """Whether MSH-15 (accept acknowledgment type) asks for this answer.

    AL always, NE never, ER only for errors, SU only for success. An empty MSH-15 is
    original mode, where the sender waits for an answer to every message: always answer.
    """
    condition = header.accept_ack_type
    if condition == "NE":
        return False
    if condition == "ER":
        return ack_code in _ERROR_CODES
    if condition == "SU":
        return ack_code in _SUCCESS_CODES
    return True


def _read_ack(text: str) -> tuple[list[Segment], Delimiters, Segment]:
    """An ACK's segments, delimiters and MSA; AckParseError when it is not readable."""
    lines = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 8:
        raise AckParseError("acknowledgment does not start with MSH")
    delimiters = delimiters_from_msh(lines[0])
    if delimiters is None:
        raise AckParseError("acknowledgment MSH-2 does not define delimiters")
    segments = read_segments(lines, delimiters)
    msa = next((s for s in segments if s.name == "MSA"), None)
    if msa is None:
        raise AckParseError("acknowledgment has no MSA segment")
    return segments, delimiters, msa


def parse_ack(text: str) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control id, ERR-3 code or "") of an ACK; ERR-1 is read before v2.5."""
    segments, delimiters, msa = _read_ack(text)
    error_code = ""
    err = next((s for s in segments if s.name == "ERR"), None)
    if err is not None:
        if err.field(3):
            error_code = err.component(3)
        else:
            # ERR-1 (ELD, before v2.5): its fourth component is the code, a CE.
            error_code = at(subcomponents(err.component(1, 4), delimiters), 1)
    return msa.field(1), msa.field(2), error_code


# HL7 table 0008 (acknowledgment code), in the words a reviewer needs.
ACK_CODE_MEANINGS = {
    "AA": "Application accept: the partner processed the message",
    "AE": "Application error: the partner could not process the message as sent; "
    "correct it and send again",
    "AR": "Application reject: the partner refused the message (message type, version or "
    "processing id not supported, or its own system failed); sending it again unchanged "
    "will not help",
    "CA": "Commit accept: the partner stored the message",
    "CE": "Commit error: the partner could not store the message as sent",
    "CR": "Commit reject: the partner refused to store the message (type, version or "
    "processing id not supported)",
}

# HL7 table 0516 (error severity), ERR-4.
SEVERITY_MEANINGS = {
    "E": "Error: the message was not processed",
    "F": "Fatal error: the partner stopped processing",
    "W": "Warning: processed, with a problem to look at",
    "I": "Information",
}


@dataclass(frozen=True)
class AckError:
    """One ERR segment in words: where, which table 0357 condition, how severe."""

    location: str
    code: str
    code_meaning: str
    # The partner's own words for the code (ERR-3.2), often more specific than the table's.
    partner_text: str
    severity: str
    severity_meaning: str
    diagnostic: str
    user_message: str


@dataclass(frozen=True)
class AckExplanation:
    code: str
    code_meaning: str
    acknowledged_control_id: str
    text: str
    errors: tuple[AckError, ...]


def _error_location(err: Segment) -> str:
    """ERR-2 (ERL: segment^sequence^field^...) or ERR-1's first components, as "PID-3"
    with the segment's sequence when given."""
    segment_id = err.value(2, 1) or err.value(1, 1)
    if not segment_id:
        return ""
    sequence = err.value(2, 2) if err.value(2, 1) else err.value(1, 2)
    field = err.value(2, 3) if err.value(2, 1) else err.value(1, 3)
    place = f"{segment_id}-{field}" if field else segment_id
    return f"{place} (segment {sequence})" if sequence and sequence != "1" else place


def explain_ack(text: str) -> AckExplanation:
    """An ACK in words: MSA-1 (table 0008), MSA-3, and every ERR's location, table 0357
    condition, ERR-4 severity (table 0516) and texts (ERR-7 diagnostic, ERR-8 user
    message). ERR-1 (ELD) is read before v2.5. Raises AckParseError like parse_ack."""
    segments, delimiters, msa = _read_ack(text)
    errors: list[AckError] = []
    for err in (s for s in segments if s.name == "ERR"):
        if err.field(3):
            code, code_text = err.value(3, 1), err.value(3, 2)
        else:
            eld_code = subcomponents(err.component(1, 4), delimiters)
            code, code_text = at(eld_code, 1), unescape(at(eld_code, 2), delimiters)
        severity = err.value(4)
        errors.append(
            AckError(
                location=_error_location(err),
                code=code,
                code_meaning=error_description(code) if code else "",
                partner_text=code_text,
                severity=severity,
                severity_meaning=SEVERITY_MEANINGS.get(severity, ""),
                diagnostic=err.value(7),
                user_message=err.value(8),
            )
        )
    ack_code = msa.value(1)
    return AckExplanation(
        code=ack_code,
        code_meaning=ACK_CODE_MEANINGS.get(ack_code, "not an HL7 table 0008 code"),
        acknowledged_control_id=msa.value(2),
        text=msa.value(3),
        errors=tuple(errors),
    )
