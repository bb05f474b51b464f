"""Discharge sync and ordered delivery under test: the routing file of the end-to-end tests
(the FHIR server and two partner systems), the partners and the engine that delivers to
them, the ids their workflows get, and polling on what the partners and the FHIR server
received. tests/integration/conftest.py builds its module fixtures from these.

Each module keeps to its own patients (visits and MRNs 5xxx discharge sync, 6xxx ordered
delivery, 7xxx amendments): a delivery queue outlives its module on the module's task
queue, so a patient shared between modules would be signalled to a queue nobody works.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from temporalio.client import Client

from exchanges.sdk import pseudonym
from tests.support.engine import Engine, mllp_send, running_engine
from tests.support.partner import Partner, running_partner
from workers import sample_messages as sm

PSEUDONYM_KEY = "test-pseudonym-key"

ROUTING = """
version = "test-1"

[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03", "A13", "A08-diagnosis", "A40", "A37"]
[destination.fhir]
base_url = "{fhir}"

[[destination]]
name = "primary-care"
kind = "mllp"
subscribes = ["A03", "A13", "A40", "A37"]
[destination.mllp]
host = "127.0.0.1"
port = {primary_care}
receiving_application = "PCEHR"
receiving_facility = "NORTHCLINIC"
ack_timeout_seconds = 1.5
[destination.policy]
max_attempts = 3
first_retry_seconds = 0.2
max_retry_seconds = 1

[[destination]]
name = "billing"
kind = "mllp"
subscribes = ["A03", "A13", "A08-diagnosis"]
[destination.mllp]
host = "127.0.0.1"
port = {billing}
receiving_application = "BILLING"
receiving_facility = "GENHOSP-FIN"
ack_timeout_seconds = 1.5
[destination.policy]
max_attempts = 5
first_retry_seconds = 0.2
max_retry_seconds = 1
temporary_error_codes = ["206", "207"]
"""


@contextlib.contextmanager
def running_partners() -> Iterator[dict[str, Partner]]:
    with running_partner("primary-care") as primary_care, running_partner("billing") as billing:
        yield {"primary-care": primary_care, "billing": billing}


@contextlib.asynccontextmanager
async def running_discharge_engine(
    client: Client,
    fhir_base_url: str,
    partners: dict[str, Partner],
    routing_dir: Path,
    **overrides: object,
) -> AsyncIterator[Engine]:
    """An engine routing discharges to the FHIR server and both partners (ROUTING)."""
    routing = routing_dir / "destinations.toml"
    routing.write_text(
        ROUTING.format(
            fhir=fhir_base_url,
            primary_care=partners["primary-care"].mllp_port,
            billing=partners["billing"].mllp_port,
        )
    )
    async with running_engine(
        client,
        fhir_base_url,
        destinations_file=routing,
        pseudonym_key=PSEUDONYM_KEY,
        **overrides,
    ) as engine:
        yield engine


def stay(visit: str, mrn: str, **changes: Any) -> sm.SampleStay:
    return sm.SampleStay(visit, patient=sm.SamplePatient(mrn=mrn), **changes)


def discharge_id(visit: str) -> str:
    key = pseudonym(PSEUDONYM_KEY.encode(), "encounter", sm.HOSPITAL, visit)
    return f"discharge-sync/{sm.HOSPITAL}/{key}"


def patient_key(mrn: str) -> str:
    return pseudonym(PSEUDONYM_KEY.encode(), "patient", sm.HOSPITAL, mrn)


def delivery_id(destination: str, mrn: str) -> str:
    return f"ordered-delivery/{destination}/{patient_key(mrn)}"


async def received(partner: Partner, visit: str) -> list[dict[str, Any]]:
    return [m for m in await partner.amessages() if f"|{visit}^" in m["text"]]


async def wait_received(
    partner: Partner, visit: str, count: int, *, answered: str = "AA", timeout: float = 30
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    messages: list[dict[str, Any]] = []
    while loop.time() < deadline:
        messages = await received(partner, visit)
        if len([m for m in messages if m["answered"] == answered]) >= count:
            return messages
        await asyncio.sleep(0.2)
    raise AssertionError(f"{partner.name} got {messages!r} for {visit}, wanted {count} {answered}")


def triggers(messages: list[dict[str, Any]], answered: str = "AA") -> list[str]:
    return [m["message_type"].split("^")[1] for m in messages if m["answered"] == answered]


async def encounter(engine: Engine, visit: str) -> dict[str, Any]:
    for _ in range(100):
        found = await engine.fhir.search("Encounter", {"identifier": visit})
        if found:
            return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no Encounter for {visit}")


async def condition_codes(engine: Engine, encounter_id: str) -> list[str]:
    conditions = await engine.fhir.search("Condition", {"encounter": f"Encounter/{encounter_id}"})
    return sorted(c["code"]["coding"][0]["code"] for c in conditions)


async def wait_condition_codes(
    engine: Engine, visit: str, expected: list[str], *, timeout: float = 30
) -> dict[str, Any]:
    """Poll until the encounter's Conditions have ``expected`` codes; the Encounter then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    codes: list[str] = []
    while loop.time() < deadline:
        found = await encounter(engine, visit)
        codes = await condition_codes(engine, found["id"])
        if codes == expected:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"Conditions of {visit}: {codes}, wanted {expected}")


async def send(engine: Engine, *messages: str) -> None:
    acks = await mllp_send(engine.mllp_port, list(messages))
    assert [ack.split("MSA|")[1][:2] for ack in acks] == ["AA"] * len(messages), acks


async def wait_alert(engine: Engine, workflow_id: str, alert: str, timeout: float = 30) -> None:
    """Until the delivery queue's DeliveryAlert search attribute is ``alert`` (visibility)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        found = await engine.client.count_workflows(
            f"WorkflowId = '{workflow_id}' AND DeliveryAlert = '{alert}' "
            "AND ExecutionStatus = 'Running'"
        )
        if found.count == 1:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id}: DeliveryAlert not {alert!r} within {timeout} s")


async def wait_delivery_log(
    engine: Engine, workflow_id: str, entries: int, timeout: float = 30
) -> list[dict[str, Any]]:
    """The queue's delivery log once it has ``entries`` lines: the partner records a message
    before its ACK reaches the workflow, so the log can trail what the partner received."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    log: list[dict[str, Any]] = []
    while loop.time() < deadline:
        log = await engine.handle(workflow_id).query("delivery_log")
        if len(log) >= entries:
            return log
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id}: delivery log {log!r}, wanted {entries} entries")
