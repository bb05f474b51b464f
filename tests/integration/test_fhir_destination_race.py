"""A FHIR destination's write that loses a race to another writer (the Encounter moved
between the delivery's read and its fenced write, HTTP 412) is a temporary failure of that
event, not the destination being unavailable: destination health would count the latter
toward tripping the destination down and holding every patient's queue. Real FHIR server;
the other writer is a second client writing between the two requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.ordered_delivery import DESTINATION_TEMPORARY, DeliveryActivities
from adapters.fhir import FhirClient, FhirWriteRaced
from adapters.hl7v2.adt_messages import parse_adt_event
from mappings.discharge_sync.fhir_builders import encounter_transaction_for
from mappings.discharge_sync.mapping import load_adt_mapping
from models.delivery import DeliverRequest, DeliveryItem
from models.destinations import DeliveryPolicy, Subscription, load_routing
from tests.support.discharge import stay
from workers import sample_messages as sm

pytestmark = pytest.mark.integration

MAPPING = "v3"
OWNED = ("Encounter", "Condition")
ROUTING = """
version = "race-test"

[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03", "A13"]
[destination.fhir]
base_url = "{base_url}"
"""


class OvertakenOnce(FhirClient):
    """A client whose next transaction is overtaken: ``rival`` writes first, after this
    client has read the version it fences on."""

    def __init__(self, base_url: str, rival: Callable[[], Awaitable[object]]) -> None:
        super().__init__(base_url)
        self._rival: Callable[[], Awaitable[object]] | None = rival

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if self._rival is not None:
            rival, self._rival = self._rival, None
            await rival()
        return await super().transaction(bundle)


def bundle(visit: sm.SampleStay, trigger: str) -> dict[str, Any]:
    event = parse_adt_event(sm.adt_event(visit, f"RACE-{visit.visit_number}-{trigger}", trigger))
    return encounter_transaction_for(event, load_adt_mapping(MAPPING))


async def test_the_client_says_the_write_lost_a_race(fhir_base_url: str) -> None:
    visit = stay("V-RACE-1", "MRN-RACE-1")
    async with FhirClient(fhir_base_url) as other:
        await other.fenced_transaction(bundle(visit, "A03"), "Encounter", owned=OWNED)

        async def cancel() -> object:
            return await other.fenced_transaction(bundle(visit, "A13"), "Encounter", owned=OWNED)

        async with OvertakenOnce(fhir_base_url, cancel) as overtaken:
            with pytest.raises(FhirWriteRaced):
                await overtaken.fenced_transaction(bundle(visit, "A03"), "Encounter", owned=OWNED)
            # Read again, as the next attempt does: it goes through.
            await overtaken.fenced_transaction(bundle(visit, "A03"), "Encounter", owned=OWNED)


async def test_the_delivery_reports_it_as_temporary_not_unavailable(
    fhir_base_url: str, tmp_path: Path
) -> None:
    visit = stay("V-RACE-2", "MRN-RACE-2")
    routing_file = tmp_path / "destinations.toml"
    routing_file.write_text(ROUTING.format(base_url=fhir_base_url))
    delivery = DeliveryActivities(None, load_routing(routing_file), task_queue="t")  # type: ignore[arg-type]
    text = sm.adt_event(visit, "RACE-2-A03", "A03")
    request = DeliverRequest(
        destination="fhir-platform",
        item=DeliveryItem(
            event_id="race-2/A03",
            subscription=Subscription.DISCHARGE,
            exchange_id="discharge-sync/test/race-2",
            event=parse_adt_event(text),
            message_text=text,
            mapping_version=MAPPING,
            routing_version="race-test",
            policy=DeliveryPolicy(),
        ),
        attempt=1,
    )
    async with FhirClient(fhir_base_url) as other:
        await other.fenced_transaction(bundle(visit, "A03"), "Encounter", owned=OWNED)

        async def cancel() -> object:
            return await other.fenced_transaction(bundle(visit, "A13"), "Encounter", owned=OWNED)

        # The destination's client, overtaken once (as another system's write would).
        await delivery.aclose()
        delivery._fhir["fhir-platform"] = OvertakenOnce(fhir_base_url, cancel)
        try:
            with pytest.raises(ApplicationError) as raised:
                await ActivityEnvironment().run(delivery.deliver_to_fhir, request)
            assert raised.value.type == DESTINATION_TEMPORARY
            assert not raised.value.non_retryable
            # The next attempt reads again and is written.
            result = await ActivityEnvironment().run(delivery.deliver_to_fhir, request)
            assert "Encounter/" in result.detail
        finally:
            await delivery.aclose()
