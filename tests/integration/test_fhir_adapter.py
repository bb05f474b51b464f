"""The FHIR adapter against the project's real FHIR server (no HTTP mocks)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from adapters.fhir import (
    FhirClient,
    FhirPreconditionFailed,
    FhirRejectedError,
    FhirRetryableError,
)
from tests.support.fhir_server import free_port

SYSTEM = "urn:careweave:test-order"


def service_request(value: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": SYSTEM, "value": value}],
        "status": status,
        "intent": "order",
        "subject": {"display": "test subject"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_capability_statement_is_r4(fhir_base_url: str) -> None:
    async with FhirClient(fhir_base_url) as fhir:
        capability = await fhir.capability()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"].startswith("4.0")


async def test_conditional_create_creates_once(fhir_base_url: str) -> None:
    value = unique("cc")
    async with FhirClient(fhir_base_url) as fhir:
        first = await fhir.conditional_create(
            service_request(value), f"identifier={SYSTEM}|{value}"
        )
        second = await fhir.conditional_create(
            service_request(value), f"identifier={SYSTEM}|{value}"
        )
        found = await fhir.search("ServiceRequest", {"identifier": f"{SYSTEM}|{value}"})
    assert first["id"] == second["id"]
    assert [resource["id"] for resource in found] == [first["id"]]


async def test_create_unless_found_says_whether_it_created(fhir_base_url: str) -> None:
    value = unique("cf")
    query = f"identifier={SYSTEM}|{value}"
    async with FhirClient(fhir_base_url) as fhir:
        first = await fhir.create_unless_found(service_request(value), query)
        second = await fhir.create_unless_found(service_request(value, "revoked"), query)
    assert (first.created, second.created) == (True, False)
    # The match comes back as it is on the server, not as the second request had it.
    assert second.resource["id"] == first.resource["id"]
    assert second.resource["status"] == "active"


async def test_version_aware_update_refuses_a_stale_version(fhir_base_url: str) -> None:
    value = unique("im")
    async with FhirClient(fhir_base_url) as fhir:
        created = await fhir.conditional_create(
            service_request(value), f"identifier={SYSTEM}|{value}"
        )
        read = await fhir.read("ServiceRequest", created["id"])
        # Another writer gets in between our read and our write.
        other = await fhir.update(
            {**read, "status": "on-hold"}, version_id=read["meta"]["versionId"]
        )
        with pytest.raises(FhirPreconditionFailed) as caught:
            await fhir.update({**read, "status": "revoked"}, version_id=read["meta"]["versionId"])
        assert caught.value.status_code == 412
        current = await fhir.read("ServiceRequest", created["id"])
        assert current["status"] == "on-hold"
        # Against the version now current, the same write goes through.
        written = await fhir.update(
            {**current, "status": "revoked"}, version_id=current["meta"]["versionId"]
        )
    assert other["meta"]["versionId"] != read["meta"]["versionId"]
    assert written["status"] == "revoked"
    assert written["id"] == created["id"]


async def test_conditional_update_versions_the_same_resource(fhir_base_url: str) -> None:
    value = unique("cu")
    query = f"ServiceRequest?identifier={SYSTEM}|{value}"
    async with FhirClient(fhir_base_url) as fhir:
        created = await fhir.conditional_update(service_request(value), query)
        revoked = await fhir.conditional_update(service_request(value, "revoked"), query)
        history = await fhir.history("ServiceRequest", created["id"])
        current = await fhir.read("ServiceRequest", created["id"])
    assert revoked["id"] == created["id"]
    assert current["status"] == "revoked"
    assert len(history) == 2


async def test_transaction_resolves_references_and_is_idempotent(fhir_base_url: str) -> None:
    value = unique("tx")
    request_uuid = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": request_uuid,
                "resource": service_request(value),
                "request": {
                    "method": "POST",
                    "url": "ServiceRequest",
                    "ifNoneExist": f"identifier={SYSTEM}|{value}",
                },
            },
            {
                "resource": {
                    "resourceType": "Task",
                    "identifier": [{"system": SYSTEM, "value": value}],
                    "status": "requested",
                    "intent": "order",
                    "focus": {"reference": request_uuid},
                },
                "request": {"method": "PUT", "url": f"Task?identifier={SYSTEM}|{value}"},
            },
        ],
    }
    async with FhirClient(fhir_base_url) as fhir:
        await fhir.transaction(bundle)
        await fhir.transaction(bundle)
        requests = await fhir.search("ServiceRequest", {"identifier": f"{SYSTEM}|{value}"})
        tasks = await fhir.search("Task", {"identifier": f"{SYSTEM}|{value}"})
    assert len(requests) == 1
    assert len(tasks) == 1
    assert tasks[0]["focus"]["reference"] == f"ServiceRequest/{requests[0]['id']}"


async def test_invalid_resource_is_rejected_with_its_outcome(fhir_base_url: str) -> None:
    invalid = service_request(unique("bad"))
    del invalid["code"]
    del invalid["intent"]
    async with FhirClient(fhir_base_url) as fhir:
        with pytest.raises(FhirRejectedError) as caught:
            await fhir.conditional_create(invalid, "identifier=urn:x|nothing")
    assert 400 <= caught.value.status_code < 500
    assert caught.value.outcome is not None
    assert caught.value.outcome["resourceType"] == "OperationOutcome"
    assert "ServiceRequest.intent" in caught.value.diagnostics


async def test_missing_resource_is_a_rejection_not_a_retry(fhir_base_url: str) -> None:
    async with FhirClient(fhir_base_url) as fhir:
        with pytest.raises(FhirRejectedError) as caught:
            await fhir.read("ServiceRequest", "does-not-exist")
    assert caught.value.status_code == 404


async def test_unreachable_server_is_retryable() -> None:
    async with FhirClient(f"http://127.0.0.1:{free_port()}/fhir", timeout=2) as fhir:
        with pytest.raises(FhirRetryableError):
            await fhir.capability()
