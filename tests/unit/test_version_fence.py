"""The version fence's rewrite of a transaction (adapters/fhir/version_fence.py); what a
real FHIR server makes of it is in tests/integration/test_late_fhir_writes.py."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.fhir import FhirClient
from adapters.fhir.version_fence import (
    WRITE_DIGEST_EXTENSION,
    CurrentVersion,
    fence_status,
    fence_target,
    fenced,
    presumable,
)

REPORT_URL = "DiagnosticReport?identifier=urn%3Areport%7CR1"


def put(resource_type: str, key: str, **fields: Any) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{key}",
        "resource": {"resourceType": resource_type, "identifier": [{"value": key}], **fields},
        "request": {"method": "PUT", "url": f"{resource_type}?identifier=urn%3Areport%7C{key}"},
    }


def transaction(sodium: str = "140") -> dict[str, Any]:
    patient = {
        "fullUrl": "urn:uuid:P1",
        "resource": {"resourceType": "Patient"},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x|1"},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            patient,
            put("DiagnosticReport", "R1", status="corrected"),
            put("Observation", "O1", valueString=sodium),
            put("Patient", "P2"),
        ],
    }


def requests(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["request"] for entry in bundle["entry"]]


def test_nothing_there_yet_turns_conditional_updates_of_owned_types_into_creates() -> None:
    bundle = fenced(transaction(), REPORT_URL, None, owned=("DiagnosticReport", "Observation"))
    assert requests(bundle) == [
        {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x|1"},
        {
            "method": "POST",
            "url": "DiagnosticReport",
            "ifNoneExist": "identifier=urn%3Areport%7CR1",
        },
        {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=urn%3Areport%7CO1"},
        # Not owned: written as the mapping says.
        {"method": "PUT", "url": "Patient?identifier=urn%3Areport%7CP2"},
    ]


def test_an_existing_report_is_updated_by_id_on_the_version_read_with_a_digest() -> None:
    bundle = fenced(transaction(), REPORT_URL, CurrentVersion("r-7", "3"))
    report = bundle["entry"][1]
    assert report["request"] == {
        "method": "PUT",
        "url": "DiagnosticReport/r-7",
        "ifMatch": 'W/"3"',
    }
    assert report["resource"]["id"] == "r-7"
    assert report["fullUrl"] == "urn:uuid:R1"  # what the other entries reference
    assert requests(bundle)[2] == {
        "method": "PUT",
        "url": "Observation?identifier=urn%3Areport%7CO1",
    }


def digest(bundle: dict[str, Any]) -> str:
    [extension] = [
        e for e in bundle["entry"][1]["resource"]["extension"] if e["url"] == WRITE_DIGEST_EXTENSION
    ]
    return str(extension["valueString"])


def test_a_write_that_changes_only_an_observation_still_changes_the_report() -> None:
    # A server that skips updates changing nothing would otherwise keep the report's
    # version, and a late copy of this write would pass If-Match.
    current = CurrentVersion("r-7", "3")
    first = fenced(transaction("133"), REPORT_URL, current)
    second = fenced(transaction("135"), REPORT_URL, current)
    again = fenced(transaction("133"), REPORT_URL, current)
    assert digest(first) != digest(second)
    assert digest(first) == digest(again)


def test_the_target_is_the_one_conditional_put_of_its_type() -> None:
    assert fence_target(transaction(), "DiagnosticReport") == (REPORT_URL, {"value": "R1"})
    with pytest.raises(ValueError, match="0 conditional PUTs of Encounter"):
        fence_target(transaction(), "Encounter")


def test_only_a_bundle_whose_one_conditional_put_is_the_fenced_resource_is_presumable() -> None:
    only_the_report = {**transaction(), "entry": transaction()["entry"][:2]}
    assert presumable(only_the_report, REPORT_URL)  # the Patient is a conditional create
    assert not presumable(transaction(), REPORT_URL)  # an Observation and a Patient PUT too


@pytest.mark.parametrize(
    ("status", "expected"),
    [("201 Created", "201"), ("201", "201"), ("200 OK", "200"), ("", None), (None, None)],
)
def test_the_fenced_entry_status_is_read_at_its_position(
    status: str | None, expected: str | None
) -> None:
    fenced_answer = {} if status is None else {"status": status}
    response = {"entry": [{"response": {"status": "200 OK"}}, {"response": fenced_answer}]}
    assert fence_status(transaction(), REPORT_URL, response) == expected


def test_a_response_without_entries_says_no_status() -> None:
    assert fence_status(transaction(), REPORT_URL, {"resourceType": "Bundle"}) is None


async def test_the_client_refuses_to_presume_new_a_bundle_with_other_conditional_puts() -> None:
    # Refused before any request: nothing listens on the address.
    async with FhirClient("http://127.0.0.1:9/fhir") as fhir:
        with pytest.raises(ValueError, match="other conditional PUTs"):
            await fhir.fenced_transaction(transaction(), "DiagnosticReport", presumed_absent=True)
