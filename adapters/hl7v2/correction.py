"""Checking a person's correction of a message before it is sent in place of the original.

A reviewer edits a message a partner refused; the edit must still be the same kind of
message, readable by the same reader the gateway uses, or the partner would get something
worse than what it refused.
"""

from __future__ import annotations

from adapters.hl7v2.fields import delimiters_from_msh, read_segments, split_segments
from adapters.hl7v2.header import DecodedMessage, MessageRejected, decode_message


def message_type_of(text: str) -> tuple[str, str]:
    """(MSH-9.1, MSH-9.2) of a message, ("", "") when it has no readable MSH."""
    lines = split_segments(text.replace("\r\n", "\r").replace("\n", "\r"))
    delimiters = delimiters_from_msh(lines[0]) if lines and lines[0].startswith("MSH") else None
    if delimiters is None:
        return "", ""
    msh = read_segments(lines[:1], delimiters)[0]
    return msh.value(9, 1), msh.value(9, 2)


def check_correction(
    corrected: str, original: str, *, supported_versions: frozenset[str]
) -> DecodedMessage:
    """The corrected message, decoded (segments separated by CR), when it is an HL7 v2
    message of the original's type and event with the segments that type requires.

    Raises MessageRejected naming the segment and field at fault otherwise.
    """
    code, event = message_type_of(original)
    try:
        return decode_message(
            corrected.encode("utf-8"),
            supported_types={code: frozenset({event})},
            supported_versions=supported_versions,
        )
    except MessageRejected as err:
        if err.error_code in ("200", "201"):
            found = "^".join(message_type_of(corrected))
            raise MessageRejected(
                err.ack_code,
                err.error_code,
                f"MSH-9 is {found or 'empty'}: the corrected message must stay {code}^{event}",
                segment_id="MSH",
                field_position=9,
                header=err.header,
            ) from err
        raise


def where(rejection: MessageRejected) -> str:
    """Where a rejection points, as a person reads it: "PID-3", "MSH", "segment 4"."""
    if rejection.segment_id and rejection.field_position:
        return f"{rejection.segment_id}-{rejection.field_position}"
    if rejection.segment_id:
        return rejection.segment_id
    return f"segment {rejection.segment_sequence}"
