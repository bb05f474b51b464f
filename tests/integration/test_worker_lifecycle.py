"""The worker owns the connections its activities keep to destinations: open_worker closes
them when the worker has stopped (careweave worker, careweave up and the test engine all
run the worker inside it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from temporalio.client import Client

from activities.discharge_sync import interpret_adt
from activities.ordered_delivery import DeliveryActivities
from adapters.fhir import FhirClient
from exchanges import discharge_sync, order_to_result, ordered_delivery
from exchanges.sdk import ExchangeDefinitionError, ExchangeRegistry
from models.audit import AuditAction
from models.settings import Settings
from tests.support.engine import engine_settings
from workers.worker import lab_fhir_client, open_worker


def routing_file(directory: Path, fhir_base_url: str) -> Path:
    path = directory / "destinations.toml"
    path.write_text(
        f"""version = "lifecycle-1"

[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03"]

[destination.fhir]
base_url = "{fhir_base_url}"
"""
    )
    return path


def lifecycle_settings(tmp_path: Path, fhir_base_url: str) -> Settings:
    return engine_settings(
        tmp_path,
        fhir_base_url,
        task_queue="careweave-lifecycle-test",
        destinations_file=routing_file(tmp_path, fhir_base_url),
    )


def destination_clients(worker_activities: object) -> list[FhirClient]:
    owners = {
        getattr(registered, "__self__", None)
        for registered in worker_activities  # type: ignore[attr-defined]
    }
    (discharge,) = [owner for owner in owners if isinstance(owner, DeliveryActivities)]
    # The one FhirClient per FHIR destination the activities keep for the worker's life.
    return list(discharge._fhir.values())


async def test_destination_clients_are_closed_when_the_worker_stops(
    temporal_client: Client, fhir_base_url: str, tmp_path: Path
) -> None:
    settings = lifecycle_settings(tmp_path, fhir_base_url)
    async with lab_fhir_client(settings, timeout=10) as lab_fhir:
        async with open_worker(temporal_client, settings, lab_fhir) as worker:
            clients = destination_clients(worker.config()["activities"])
            assert len(clients) == 1
            async with worker:
                statement = await clients[0].capability()
                assert statement["resourceType"] == "CapabilityStatement"
        # httpx refuses to send on a closed client: the pool was really shut.
        with pytest.raises(RuntimeError, match="closed"):
            await clients[0].capability()
        # The lab-result client is the caller's, still open until its own block ends.
        assert (await lab_fhir.capability())["resourceType"] == "CapabilityStatement"


async def test_an_activity_without_an_audit_action_stops_the_worker_at_start(
    temporal_client: Client, fhir_base_url: str, tmp_path: Path
) -> None:
    # The discharge exchange as an engineer might register it, forgetting one action.
    forgetful = dataclasses.replace(
        discharge_sync.EXCHANGE,
        audit_actions={interpret_adt: AuditAction.TRANSFORM},
    )
    registry = ExchangeRegistry(
        [order_to_result.EXCHANGE, forgetful], shared_steps=[ordered_delivery.STEP]
    )
    settings = lifecycle_settings(tmp_path, fhir_base_url)
    async with lab_fhir_client(settings, timeout=10) as lab_fhir:
        with pytest.raises(ExchangeDefinitionError, match="'closed_discharge' has no audit action"):
            async with open_worker(temporal_client, settings, lab_fhir, registry=registry):
                pytest.fail("the worker was built")
