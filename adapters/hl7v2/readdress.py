"""Forwarding a message to another system: new MSH-3..6 and MSH-10, everything else as received."""

from __future__ import annotations


def readdress(
    text: str,
    *,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    control_id: str,
) -> str:
    """The message with Careweave as sender, the partner as receiver and our control id.

    The partner acknowledges *our* MSH-10, and a resend of the same delivery carries the
    same one, so the partner can recognise a duplicate. Segments after MSH are untouched:
    data is forwarded verbatim, never reinterpreted.
    """
    segments = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    msh = segments[0]
    if not msh.startswith("MSH") or len(msh) < 8:
        raise ValueError("message does not start with an MSH segment")
    separator = msh[3]
    fields = msh.split(separator)
    # fields[0] = "MSH", fields[1] = encoding characters, fields[n] = MSH-(n+1).
    while len(fields) < 12:
        fields.append("")
    fields[2] = sending_application
    fields[3] = sending_facility
    fields[4] = receiving_application
    fields[5] = receiving_facility
    fields[9] = control_id
    segments[0] = separator.join(fields)
    return "\r".join(segment for segment in segments if segment) + "\r"
