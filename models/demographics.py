"""One person's identification as a PID segment states it: every identifier, name, address
and contact number, birth date, sex and death.

Shared by patient-sync's person updates (models/person.py) and lab orders and results
(models/lab.py), so a Patient created from a lab result is the one an A28 would create.
Values are unescaped and otherwise as sent; codes (name type, address type, telecom use)
are kept as sent and interpreted by the mappings. Everything here is PHI: payloads only,
never ids, search attributes or logs.
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PatientRef(_Frozen):
    """The patient as PID names them; PHI, so it never goes into ids or logs."""

    identifier: str
    assigning_authority: str = ""
    identifier_type: str = ""
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str = ""

    def is_other_patient_than(self, other: PatientRef) -> bool:
        """Both name a patient by an identifier of the same assigning authority, and the
        identifiers differ: a result filed against ``other``'s order would be the wrong
        patient's. Identifiers of different authorities cannot be compared: False."""
        if not self.identifier or not other.identifier:
            return False
        if self.assigning_authority.strip().upper() != other.assigning_authority.strip().upper():
            return False
        return self.identifier.strip() != other.identifier.strip()


class PersonIdentifier(_Frozen):
    """One PID-3 repetition (CX): id number, assigning authority (CX-4), type (CX-5)."""

    value: str
    assigning_authority: str = ""
    identifier_type: str = ""


class PersonName(_Frozen):
    """One PID-5 repetition (XPN); ``name_type`` is XPN-7 as sent (table 0200)."""

    family: str = ""
    given: tuple[str, ...] = ()  # XPN-2, then XPN-3 (second and further given names)
    prefix: str = ""  # XPN-5
    suffix: tuple[str, ...] = ()  # XPN-4, then XPN-6 (degree)
    name_type: str = ""


class PersonAddress(_Frozen):
    """One PID-11 repetition (XAD); ``address_type`` is XAD-7 as sent (table 0190)."""

    lines: tuple[str, ...] = ()  # XAD-1.1 street, XAD-2 other designation
    city: str = ""  # XAD-3
    state: str = ""  # XAD-4
    postal_code: str = ""  # XAD-5
    country: str = ""  # XAD-6
    district: str = ""  # XAD-9 county/parish
    address_type: str = ""


class ContactNumber(_Frozen):
    """One PID-13 / PID-14 repetition (XTN); codes as sent (tables 0201, 0202)."""

    use_code: str = ""  # XTN-2: PRN, WPN, NET, ...
    equipment_type: str = ""  # XTN-3: PH, CP, FX, Internet, ...
    email: str = ""  # XTN-4
    number: str = ""  # XTN-12, else XTN-5..8 (country, area, local, extension), else XTN-1


class PersonDemographics(_Frozen):
    """What one PID says about a person, field by field."""

    # The PID-3 identifier the Patient is found by (MR preferred), read exactly as the lab
    # and discharge exchanges read it, so all of them reach one Patient.
    patient: PatientRef
    identifiers: tuple[PersonIdentifier, ...]  # every PID-3 repetition
    names: tuple[PersonName, ...] = ()  # PID-5, in message order
    birth_date: str = ""  # PID-7 to its precision: "YYYY", "YYYY-MM" or "YYYY-MM-DD"
    sex: str = ""  # PID-8 (table 0001)
    addresses: tuple[PersonAddress, ...] = ()  # PID-11
    home_contacts: tuple[ContactNumber, ...] = ()  # PID-13
    business_contacts: tuple[ContactNumber, ...] = ()  # PID-14
    # PID-29 date/time of death as a FHIR dateTime, and PID-30 death indicator (Y/N; None
    # when not sent). A time of death without the indicator still means deceased.
    deceased_at: str = ""
    deceased: bool | None = None
    # PID fields sent as "" ("PID-7", "PID-11", ...): the sender asks to delete the value.
    explicit_nulls: tuple[str, ...] = ()


def contradicting_identifiers(
    first: PersonDemographics | None, second: PersonDemographics | None
) -> tuple[str, ...]:
    """The kinds of identifier ("<authority> <type>", no values) both PIDs carry with
    different values: the same authority's MRN, account or national id differing means two
    patients, whichever repetition each message put first. Empty when either PID is unknown
    (runs recorded before the whole PID was read)."""
    if first is None or second is None:
        return ()

    def by_kind(person: PersonDemographics) -> dict[tuple[str, str], set[str]]:
        kinds: dict[tuple[str, str], set[str]] = {}
        for identifier in person.identifiers:
            kind = (
                identifier.assigning_authority.strip().upper(),
                identifier.identifier_type.strip().upper(),
            )
            kinds.setdefault(kind, set()).add(identifier.value.strip())
        return kinds

    theirs = by_kind(second)
    return tuple(
        f"{authority or '-'} {kind or '-'}"
        for (authority, kind), values in sorted(by_kind(first).items())
        if authority and (authority, kind) in theirs and not values & theirs[(authority, kind)]
    )
