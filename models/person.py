"""Canonical person-information events for patient-sync: ADT^A28 (add) and ^A31 (update).

Between the HL7 v2 reader (adapters/hl7v2/person_messages.py) and the FHIR Patient
mapping (mappings/patient_sync/). Values are unescaped and otherwise as sent; codes
(name type, address type, telecom use) are kept as sent and interpreted by the mapping.
Everything here is PHI: payloads only, never ids, search attributes or logs.

A PID field is in one of three states, and they mean different things to a receiver
(HL7 v2.5 section 2.5.3): empty (not sent: keep what you have), a value, or ``""`` (two
double quotes: delete what you have). ``explicit_nulls`` names the fields sent as ``""``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict

from models.lab import PatientRef


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PersonTrigger(StrEnum):
    ADD = "A28"
    UPDATE = "A31"


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
    """What one PID says about a person, field by field: the part of a person update that
    other events carrying a PID (a merge's survivor, a link's two records) read the same way
    (adapters/hl7v2/person_messages.read_person_demographics)."""

    # The PID-3 identifier the Patient is found by (MR preferred), read exactly as the lab
    # and discharge exchanges read it, so all three reach one Patient.
    patient: PatientRef
    identifiers: tuple[PersonIdentifier, ...]  # every PID-3 repetition
    names: tuple[PersonName, ...] = ()  # PID-5, in message order
    birth_date: str = ""  # PID-7 to its precision: "YYYY", "YYYY-MM" or "YYYY-MM-DD"
    sex: str = ""  # PID-8 (table 0001)
    addresses: tuple[PersonAddress, ...] = ()  # PID-11
    home_contacts: tuple[ContactNumber, ...] = ()  # PID-13
    business_contacts: tuple[ContactNumber, ...] = ()  # PID-14
    # PID fields sent as "" ("PID-7", "PID-11", ...): the sender asks to delete the value.
    explicit_nulls: tuple[str, ...] = ()


class PersonUpdate(PersonDemographics):
    """What one A28/A31 says about a person: the PID's demographics and the message's header."""

    trigger: PersonTrigger
    control_id: str  # MSH-10
    sending_facility: str  # MSH-4


# --- what a patient-sync exchange did (its result; no PHI) --------------------------------


class AppliedMessage(_Frozen):
    """One message of the exchange and what became of it."""

    control_id: str  # MSH-10
    sending_facility: str  # MSH-4
    message_type: str  # ADT^A28 / ADT^A31
    outcome: Literal["created", "updated", "unchanged", "dismissed"]
    patient: str = ""  # "Patient/<logical id>" on the FHIR server
    version_conflicts: int = 0  # 412s met and merged again


class PatientSyncSummary(_Frozen):
    status: str
    applied: list[AppliedMessage]
