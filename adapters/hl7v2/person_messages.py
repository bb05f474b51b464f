"""ADT^A28 (add person information) and ^A31 (update person information) -> PersonUpdate.

Runs inside an activity, never in workflow code. Read by splitting on the message's own
delimiters with the same low-level readers as the lab and discharge parsers (no hl7apy:
patient-sync reads one PID), so a field reads the same in every exchange; the key
identifier is chosen from PID-3 exactly as they choose it (MR preferred).

Only PID is needed. EVN and PV1, which HL7 makes required in ADT_A05, are not read:
nothing in a person update depends on them, and the gateway requires only what an
exchange cannot do without (exchanges/patient_sync.py).

Errors name the segment and field only, never a value: they go into Temporal failure
messages and review summaries, which must carry no PHI.
"""

from __future__ import annotations

import re
from datetime import date

from adapters.hl7v2.fields import (
    Delimiters,
    Segment,
    at,
    components,
    delimiters_from_msh,
    hd_name,
    nested_hd_name,
    read_segments,
    split_segments,
    subcomponents,
    unescape_text,
)
from adapters.hl7v2.lab_messages import LabMessageInvalid, read_patient
from models.errors import Hl7Error
from models.person import (
    ContactNumber,
    PersonAddress,
    PersonDemographics,
    PersonIdentifier,
    PersonName,
    PersonTrigger,
    PersonUpdate,
)

__all__ = [
    "PersonMessageInvalid",
    "parse_person_update",
    "read_person_demographics",
    "read_person_name",
]

# HL7's explicit null: "delete the value you have" (v2.5 section 2.5.3).
EXPLICIT_NULL = '""'
# The PID fields patient-sync maps; an explicit null is recorded for these only.
_MAPPED_FIELDS = (5, 7, 8, 11, 13, 14)
# DTM to day precision at most: YYYY[MM[DD]], then a time and offset that a birth date drops.
_BIRTH_DATE = re.compile(
    r"(?P<y>\d{4})(?:(?P<m>\d{2})(?:(?P<d>\d{2})(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)?)?)?"
    r"(?:[+-]\d{4})?"
)


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
    demographics = read_person_demographics(pid, d)
    return PersonUpdate(
        trigger=trigger,
        control_id=unescape_text(msh.raw(10), d).strip(),
        sending_facility=hd_name(msh.raw(4), d).strip(),
        # Shallow: the field values, already validated, are taken over as they are.
        **dict(demographics),
    )


def read_person_demographics(pid: Segment, d: Delimiters) -> PersonDemographics:
    """What one PID says about a person; every event carrying a PID reads it here (person
    updates, a merge's survivor, a link's two records), so a field reads the same in all.

    Raises PersonMessageInvalid naming the PID field that cannot be read.
    """
    try:
        patient = read_patient([pid], d)
    except LabMessageInvalid as err:
        raise PersonMessageInvalid(err.segment_id, err.field_position, err.text) from err
    return PersonDemographics(
        patient=patient,
        identifiers=_identifiers(pid, d),
        names=tuple(name for rep in _values(pid, 5) if (name := read_person_name(rep, d))),
        birth_date=_birth_date(pid, d),
        sex="" if _is_null(pid, 8) else _leaf(at(components(pid.raw(8), d), 1), d),
        addresses=tuple(a for rep in _values(pid, 11) if (a := _address(rep, d))),
        home_contacts=tuple(c for rep in _values(pid, 13) if (c := _contact(rep, d))),
        business_contacts=tuple(c for rep in _values(pid, 14) if (c := _contact(rep, d))),
        explicit_nulls=tuple(f"PID-{n}" for n in _MAPPED_FIELDS if _is_null(pid, n)),
    )


def _trigger(msh: Segment, d: Delimiters) -> PersonTrigger:
    # MSH-9.3 (ADT_A05) is not checked: senders also send A31 as ADT_A01.
    message_type = components(msh.raw(9), d)
    if _leaf(at(message_type, 1), d) != "ADT":
        raise PersonMessageInvalid("MSH", 9, "not an ADT message")
    try:
        return PersonTrigger(_leaf(at(message_type, 2), d))
    except ValueError:
        raise PersonMessageInvalid("MSH", 9, "trigger event is not A28 or A31") from None


def _leaf(raw: str, d: Delimiters) -> str:
    """One component or subcomponent; a component-level "" is read as empty (the whole
    repetition is replaced anyway, see mappings/patient_sync/README.md)."""
    value = unescape_text(raw, d).strip()
    return "" if value == EXPLICIT_NULL else value


def _is_null(segment: Segment, position: int) -> bool:
    return segment.repetitions(position) == [EXPLICIT_NULL]


def _values(segment: Segment, position: int) -> list[str]:
    """The field's repetitions, none when it is absent or an explicit null."""
    if _is_null(segment, position):
        return []
    return [rep for rep in segment.repetitions(position) if rep != ""]


def _identifiers(pid: Segment, d: Delimiters) -> tuple[PersonIdentifier, ...]:
    found: list[PersonIdentifier] = []
    for rep in pid.repetitions(3):
        parts = components(rep, d)
        # Not stripped: the key identifier (lab_messages.read_patient) is read as sent, and the
        # two must compare equal.
        value = unescape_text(at(parts, 1), d)
        if not value.strip():
            continue
        found.append(
            PersonIdentifier(
                value=value,
                assigning_authority=nested_hd_name(at(parts, 4), d),
                identifier_type=unescape_text(at(parts, 5), d),
            )
        )
    return tuple(found)


def read_person_name(rep: str, d: Delimiters) -> PersonName | None:
    """One XPN repetition (PID-5, MRG-7 prior name); None when it names nobody."""
    parts = components(rep, d)
    family = _leaf(at(subcomponents(at(parts, 1), d), 1), d)
    given = tuple(g for g in (_leaf(at(parts, 2), d), _leaf(at(parts, 3), d)) if g)
    if not family and not given:
        return None
    return PersonName(
        family=family,
        given=given,
        prefix=_leaf(at(parts, 5), d),
        suffix=tuple(s for s in (_leaf(at(parts, 4), d), _leaf(at(parts, 6), d)) if s),
        name_type=_leaf(at(parts, 7), d).upper(),
    )


def _birth_date(pid: Segment, d: Delimiters) -> str:
    """PID-7 to the precision sent (FHIR date allows YYYY and YYYY-MM); "" when absent.

    An unreadable date is refused rather than dropped: a birth date is an identity
    attribute, and an update that silently lost it could not be told from one without it.
    """
    if _is_null(pid, 7):
        return ""
    value = _leaf(at(components(pid.raw(7), d), 1), d)
    if not value:
        return ""
    match = _BIRTH_DATE.fullmatch(value)
    if match is None:
        raise PersonMessageInvalid("PID", 7, "not a valid HL7 date")
    year, month, day = match.group("y"), match.group("m"), match.group("d")
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise PersonMessageInvalid("PID", 7, "not a valid HL7 date") from None
    return "-".join(part for part in (year, month, day) if part)


def _address(rep: str, d: Delimiters) -> PersonAddress | None:
    parts = components(rep, d)
    address = PersonAddress(
        # XAD-1 is SAD: street or mailing address & street name & dwelling number.
        lines=tuple(
            line
            for line in (
                _leaf(at(subcomponents(at(parts, 1), d), 1), d),
                _leaf(at(parts, 2), d),
            )
            if line
        ),
        city=_leaf(at(parts, 3), d),
        state=_leaf(at(parts, 4), d),
        postal_code=_leaf(at(parts, 5), d),
        country=_leaf(at(parts, 6), d),
        # XAD-9 is IS up to v2.6 and CWE since: its first subcomponent either way.
        district=_leaf(at(subcomponents(at(parts, 9), d), 1), d),
        address_type=_leaf(at(parts, 7), d).upper(),
    )
    if address == PersonAddress(address_type=address.address_type):
        return None
    return address


def _contact(rep: str, d: Delimiters) -> ContactNumber | None:
    parts = components(rep, d)
    # XTN-12 (the unformatted number, v2.6+) is the whole number; else XTN-5..8 (country,
    # area, local number, extension); else XTN-1 (the formatted number, deprecated since
    # v2.3 and still what most senders fill).
    number = _leaf(at(parts, 12), d)
    country, area, local, extension = (_leaf(at(parts, i), d) for i in (5, 6, 7, 8))
    if not number and local:
        number = " ".join(
            part
            for part in (f"+{country}" if country else "", f"({area})" if area else "", local)
            if part
        )
        if extension:
            number += f" ext. {extension}"
    number = number or _leaf(at(parts, 1), d)
    contact = ContactNumber(
        use_code=_leaf(at(parts, 2), d).upper(),
        equipment_type=_leaf(at(parts, 3), d),
        email=_leaf(at(parts, 4), d),
        number=number,
    )
    if not contact.email and not contact.number:
        return None
    return contact
