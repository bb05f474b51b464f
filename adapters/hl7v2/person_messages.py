"""ADT^A28 (add person information) and ^A31 (update person information) -> PersonUpdate.

Runs inside an activity, never in workflow code. The PID is read by
adapters/hl7v2/person_fields.py, which lab orders and results use too, so a field reads the
same in every exchange; the key identifier is chosen from PID-3 exactly as the lab and
discharge readers choose it (MR preferred).

Only PID is needed. EVN and PV1, which HL7 makes required in ADT_A05, are not read:
nothing in a person update depends on them, and the gateway requires only what an
exchange cannot do without (exchanges/patient_sync.py).

Errors name the segment and field only, never a value: they go into Temporal failure
messages and review summaries, which must carry no PHI.
"""

from __future__ import annotations

from adapters.hl7v2.fields import (
    Delimiters,
    Segment,
    at,
    components,
    delimiters_from_msh,
    hd_name,
    read_segments,
    split_segments,
    unescape_text,
)
from adapters.hl7v2.lab_messages import LabMessageInvalid, read_patient
from adapters.hl7v2.person_fields import PidFieldInvalid, read_person
from models.errors import Hl7Error
from models.person import PersonDemographics, PersonTrigger, PersonUpdate

__all__ = ["PersonMessageInvalid", "parse_person_update", "read_person_demographics"]


class PersonMessageInvalid(Hl7Error, ValueError):
    """The message cannot be used as a person update (goes to a reviewer).

    The text names the segment and field only; it never carries a value (no PHI).
    """

    def __init__(self, segment_id: str, field_position: int | None, text: str) -> None:
        self.segment_id = segment_id
        self.field_position = field_position
        self.text = text
        where = segment_id if field_position is None else f"{segment_id}-{field_position}"
        super().__init__(f"{where}: {text}")


def parse_person_update(text: str) -> PersonUpdate:
    """The person update of one decoded ADT^A28 / ^A31 (CR, LF or CRLF separated)."""
    lines = split_segments(text.replace("\r\n", "\r").replace("\n", "\r"))
    if not lines or not lines[0].startswith("MSH"):
        raise PersonMessageInvalid("MSH", None, "message does not start with MSH")
    d = delimiters_from_msh(lines[0])
    if d is None:
        raise PersonMessageInvalid("MSH", 2, "encoding characters missing")
    segments = read_segments(lines, d)
    msh = segments[0]
    trigger = _trigger(msh, d)
    pid = next((s for s in segments if s.name == "PID"), None)
    if pid is None:
        raise PersonMessageInvalid("PID", None, "PID segment missing")
    person = read_person_demographics(pid, d)
    return PersonUpdate(
        trigger=trigger,
        control_id=unescape_text(msh.raw(10), d).strip(),
        sending_facility=hd_name(msh.raw(4), d).strip(),
        **dict(person),
    )


def read_person_demographics(pid: Segment, d: Delimiters) -> PersonDemographics:
    """What one PID says about a person, keyed as every exchange keys it; every event that
    carries a PID reads it here (person updates, a merge's survivor, a link's two records).

    Raises PersonMessageInvalid naming the PID field that cannot be read.
    """
    try:
        return read_person(pid, d, read_patient([pid], d))
    except (LabMessageInvalid, PidFieldInvalid) as err:
        raise PersonMessageInvalid(err.segment_id, err.field_position, err.text) from err


def _trigger(msh: Segment, d: Delimiters) -> PersonTrigger:
    # MSH-9.3 (ADT_A05) is not checked: senders also send A31 as ADT_A01.
    message_type = components(msh.raw(9), d)
    if _code(at(message_type, 1), d) != "ADT":
        raise PersonMessageInvalid("MSH", 9, "not an ADT message")
    try:
        return PersonTrigger(_code(at(message_type, 2), d))
    except ValueError:
        raise PersonMessageInvalid("MSH", 9, "trigger event is not A28 or A31") from None


def _code(raw: str, d: Delimiters) -> str:
    return unescape_text(raw, d).strip()
