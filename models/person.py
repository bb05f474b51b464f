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

from models.demographics import (
    ContactNumber,
    PersonAddress,
    PersonDemographics,
    PersonIdentifier,
    PersonName,
)

__all__ = [
    "AppliedMessage",
    "ContactNumber",
    "PatientSyncSummary",
    "PersonAddress",
    "PersonDemographics",
    "PersonIdentifier",
    "PersonName",
    "PersonTrigger",
    "PersonUpdate",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PersonTrigger(StrEnum):
    ADD = "A28"
    UPDATE = "A31"


class PersonUpdate(PersonDemographics):
    """What one A28/A31 says about a person, field by field."""

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
