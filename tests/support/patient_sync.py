"""Patient-sync under test: synthetic ADT^A28/A31 messages (every person here is invented),
the ids their workflows get, and reading the Patient the FHIR server holds.

Patients of the end-to-end module are MRN 8xxx (other modules keep to theirs).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from temporalio.client import WorkflowHandle

from adapters.fhir import FhirClient
from exchanges.sdk import pseudonym
from workers import sample_messages as sm

PSEUDONYM_KEY = "test-patient-sync-key"
PATIENT_SYSTEM = f"urn:careweave:patient-id:{sm.HOSPITAL}"


@dataclass(frozen=True)
class Person:
    """PID fields as sent (ER7 of the field, "" for empty, '""' for HL7's explicit null)."""

    mrn: str
    other_identifiers: str = ""  # further PID-3 repetitions, "~"-joined
    name: str = "Testpatient^Alma^B^^Ms"
    birth_date: str = "19720415"
    sex: str = "F"
    address: str = "12 Elm St^Apt 3^Springfield^IL^62701^USA^H"
    home_phone: str = "^PRN^PH^^1^217^5550100"
    business_phone: str = ""

    def with_(self, **changes: str) -> Person:
        return replace(self, **changes)


def person_message(person: Person, control_id: str, trigger: str = "A31") -> str:
    """ADT^A28 or ^A31 (structure ADT_A05) from the registration system, with the EVN and
    the `PV1|1|N` (patient class: not applicable) senders put in person updates."""
    identifiers = f"{person.mrn}^^^{sm.HOSPITAL}^MR"
    if person.other_identifiers:
        identifiers += "~" + person.other_identifiers
    pid = [""] * 15
    pid[1] = "1"
    pid[3] = identifiers
    pid[5] = person.name
    pid[7] = person.birth_date
    pid[8] = person.sex
    pid[11] = person.address
    pid[13] = person.home_phone
    pid[14] = person.business_phone
    segments = [
        f"MSH|^~\\&|REGSYS|{sm.HOSPITAL}|CAREWEAVE|{sm.HOSPITAL}|20261201101500||"
        f"ADT^{trigger}^ADT_A05|{control_id}|P|2.5.1|||AL|NE",
        f"EVN|{trigger}|20261201101500",
        "PID|" + "|".join(pid[1:]).rstrip("|"),
        "PV1|1|N",
    ]
    return "\r".join(segments) + "\r"


def patient_sync_id(mrn: str) -> str:
    key = pseudonym(PSEUDONYM_KEY.encode(), "patient", sm.HOSPITAL, mrn)
    return f"patient-sync/{sm.HOSPITAL}/{key}"


async def patients_with_mrn(fhir: FhirClient, mrn: str) -> list[dict[str, Any]]:
    return await fhir.search("Patient", {"identifier": f"{PATIENT_SYSTEM}|{mrn}"})


async def wait_patient(
    fhir: FhirClient, mrn: str, until: Any = None, *, timeout: float = 30
) -> dict[str, Any]:
    """The one Patient with this MRN, once ``until(patient)`` holds (polls the server)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    found: list[dict[str, Any]] = []
    while loop.time() < deadline:
        found = await patients_with_mrn(fhir, mrn)
        if len(found) == 1 and (until is None or until(found[0])):
            return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"Patient {mrn}: {found!r} on {fhir.base_url}")


async def wait_applied(
    handle: WorkflowHandle[Any, Any], count: int, *, timeout: float = 30
) -> list[dict[str, Any]]:
    """The exchange's applied messages once there are ``count``: the workflow records a
    write when its activity has returned, a moment after the server has it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    applied: list[dict[str, Any]] = []
    while loop.time() < deadline:
        applied = await handle.query("applied_messages")
        if len(applied) >= count:
            return applied
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id}: applied {applied!r}, wanted {count}")
