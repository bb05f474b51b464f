"""Business identifiers as every exchange's FHIR builders write and search them.

One rule, so that the Patient a discharge writes, the Patient patient-sync creates or
merges and the subject a lab result references are the same resource: a number is
unique only within whoever issued it, so the issuer (CX-4, XCN-9, MSH-4) is part of the
identifier system, URL-quoted. Pure functions; the systems themselves are mapping data
(each exchange's versioned TOML).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from models.lab import PatientRef

__all__ = [
    "conditional_url",
    "identifier_query",
    "identifier_search",
    "patient_identifier",
    "qualified_system",
    "quoted_code",
]

JSON = dict[str, Any]


def qualified_system(system: str, issuer: str) -> str:
    """``system:<issuer>``, or the bare system when the sender named no issuer.

    The issuer is quoted so any character a sender uses stays a valid URI.
    """
    return f"{system}:{quoted_code(issuer)}" if issuer else system


@lru_cache(maxsize=4096)
def quoted_code(text: str) -> str:
    """``text`` URL-quoted with nothing kept: for values a feed repeats on every message
    (issuers, coding systems, test codes), so each is quoted once, not per resource."""
    return quote(text, safe="")


def patient_identifier(patient: PatientRef, system: str) -> JSON:
    """Patient.identifier of the PID-3 identifier every exchange keys the patient by
    (MR preferred, as the HL7 readers choose it), qualified by its CX-4."""
    return {
        "system": qualified_system(system, patient.assigning_authority),
        "value": patient.identifier,
    }


def identifier_query(identifier: Mapping[str, Any]) -> str:
    """``identifier=<system>|<value>``, URL-quoted: an If-None-Exist header or ``ifNoneExist``."""
    # The system is one of a few per feed (quoted once); the value is new on every message.
    # "/" and ":" may stand in a query as they are (RFC 3986 section 3.4), and identifier
    # values built here are made of them: kept, the value's quoting takes the fast path.
    value = quote(identifier["value"], safe="/:")
    return f"identifier={quoted_code(identifier['system'])}%7C{value}"


def patient_query(identifier: Mapping[str, Any]) -> str:
    """The If-None-Exist query that finds the Patient an identifier names today: a Patient
    retired by a merge (active=false) still carries its identifier, and so does the
    survivor (as an old one), so only the one not retired matches -- a result or update for
    a merged-away number lands on the survivor instead of matching two Patients (412)."""
    return f"{identifier_query(identifier)}&active:not=false"


def conditional_url(resource_type: str, identifier: Mapping[str, Any]) -> str:
    """``<Type>?identifier=<system>|<value>``, URL-quoted: a conditional PUT's URL."""
    return f"{resource_type}?{identifier_query(identifier)}"


def identifier_search(resource_type: str, identifier: Mapping[str, Any]) -> str:
    """``<Type>?identifier=<system>|<value>`` NOT quoted, for FhirClient.conditional_update,
    which quotes each value itself: a quoted one would be quoted twice and match nothing
    (the conditional PUT would then create a second resource)."""
    return f"{resource_type}?identifier={identifier['system']}|{identifier['value']}"
