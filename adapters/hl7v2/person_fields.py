"""One PID segment -> PersonDemographics: every identifier, name, address, contact number,
birth date, sex and death, as the segment states them.

Read by splitting on the message's own delimiters with the same low-level readers as every
other HL7 reader here, so a field reads the same in patient-sync (A28/A31) and in lab
orders and results. Errors name the segment and field only, never a value: they reach
Temporal failure messages and review summaries, which must carry no PHI.
"""

from __future__ import annotations

import re
from datetime import date

from adapters.hl7v2.fields import (
    Delimiters,
    Segment,
    at,
    components,
    nested_hd_name,
    subcomponents,
    unescape_text,
)
from models.demographics import (
    ContactNumber,
    PatientRef,
    PersonAddress,
    PersonDemographics,
    PersonIdentifier,
    PersonName,
)
from models.errors import Hl7Error

__all__ = ["EXPLICIT_NULL", "PidFieldInvalid", "read_person", "read_person_name"]

# HL7's explicit null: "delete the value you have" (v2.5 section 2.5.3).
EXPLICIT_NULL = '""'
# The PID fields the Patient mappings read; an explicit null is recorded for these only.
_MAPPED_FIELDS = (5, 7, 8, 11, 13, 14, 29, 30)
# DTM to day precision at most: YYYY[MM[DD]], then a time and offset that a date drops.
_DATE = re.compile(
    r"(?P<y>\d{4})(?:(?P<m>\d{2})(?:(?P<d>\d{2})(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,4})?)?)?)?)?)?"
    r"(?:[+-]\d{4})?"
)


class PidFieldInvalid(Hl7Error, ValueError):
    """A PID field cannot be read; names the field only (no PHI)."""

    def __init__(self, field_position: int, text: str) -> None:
        self.segment_id = "PID"
        self.field_position = field_position
        self.text = text
        super().__init__(f"PID-{field_position}: {text}")


def read_person(pid: Segment, d: Delimiters, patient: PatientRef) -> PersonDemographics:
    """Everything ``pid`` says about the person; ``patient`` is its key identifier, read by
    the caller's reader (lab_messages.read_patient) so every exchange keys it alike.

    Raises PidFieldInvalid for an unreadable birth or death date: identity attributes are
    refused rather than dropped, and the caller decides what a refusal costs.
    """
    return PersonDemographics(
        patient=patient,
        identifiers=_identifiers(pid, d),
        names=tuple(name for rep in _values(pid, 5) if (name := read_person_name(rep, d))),
        birth_date=_date(pid, 7, d),
        sex="" if _is_null(pid, 8) else _leaf(at(components(pid.raw(8), d), 1), d),
        addresses=tuple(a for rep in _values(pid, 11) if (a := _address(rep, d))),
        home_contacts=tuple(c for rep in _values(pid, 13) if (c := _contact(rep, d))),
        business_contacts=tuple(c for rep in _values(pid, 14) if (c := _contact(rep, d))),
        deceased_at=_date(pid, 29, d),
        deceased=_indicator(pid, 30, d),
        explicit_nulls=tuple(f"PID-{n}" for n in _MAPPED_FIELDS if _is_null(pid, n)),
    )


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
    """One XPN repetition (PID-5, MRG-7); None when it names nobody."""
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


def _date(pid: Segment, position: int, d: Delimiters) -> str:
    """A PID date (birth PID-7, death PID-29) to the precision sent, as a FHIR date (YYYY,
    YYYY-MM or YYYY-MM-DD); "" when absent.

    An unreadable date is refused rather than dropped: a birth date is an identity
    attribute, and an update that silently lost it could not be told from one without it.
    """
    if _is_null(pid, position):
        return ""
    value = _leaf(at(components(pid.raw(position), d), 1), d)
    if not value:
        return ""
    match = _DATE.fullmatch(value)
    if match is None:
        raise PidFieldInvalid(position, "not a valid HL7 date")
    year, month, day = match.group("y"), match.group("m"), match.group("d")
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise PidFieldInvalid(position, "not a valid HL7 date") from None
    return "-".join(part for part in (year, month, day) if part)


def _indicator(pid: Segment, position: int, d: Delimiters) -> bool | None:
    """An ID field of table 0136 (Y/N); None when not sent or not Y/N."""
    value = _leaf(pid.raw(position), d).upper()
    return {"Y": True, "N": False}.get(value)


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
