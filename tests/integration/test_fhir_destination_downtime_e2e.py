"""A FHIR destination stopped and started again, end to end: discharge events for ten
patients are sent while the destination's FHIR server (a second server process, not
Careweave's own FHIR store) is not running; its health workflow trips down on the refused
connections, holds every queue, probes `GET metadata`, and once the server is started again
on the same port it comes back up by itself and the queues drain. The server's own version
history (`Encounter/{id}/_history`) is the proof: each patient's events written in the
order they were sent, each exactly once. Patients MRN63xx.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import pytest
from temporalio.client import Client

from adapters.fhir import FhirClient
from models.destination_health import HealthState
from tests.support.destination_health import state_rows, wait_health
from tests.support.discharge import PSEUDONYM_KEY, delivery_id, send, stay
from tests.support.engine import Engine, running_engine
from tests.support.fhir_server import free_port, running_fhir_server
from workers import sample_messages as sm

DESTINATION = "fhir-downstream"
PATIENTS = [f"63{n:02d}" for n in range(1, 11)]
# Each patient's events in the order sent: discharge, cancel, discharge again with another
# disposition (PV1-36), cancel, discharge. Every one is a new version of the one Encounter.
EVENTS = [("A03", "01"), ("A13", ""), ("A03", "02"), ("A13", ""), ("A03", "03")]
TRIP_AFTER = 3

ROUTING = """
version = "fhir-downtime-1"

[[destination]]
name = "{name}"
kind = "fhir"
subscribes = ["A03", "A13"]
[destination.fhir]
base_url = "{base_url}"
timeout_seconds = 5
[destination.policy]
max_attempts = 5
first_retry_seconds = 0.2
max_retry_seconds = 1
"""


@pytest.fixture(scope="module")
def destination_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def engine(
    temporal_client: Client,
    fhir_base_url: str,
    destination_port: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    routing = tmp_path_factory.mktemp("routing") / "destinations.toml"
    routing.write_text(
        ROUTING.format(name=DESTINATION, base_url=f"http://127.0.0.1:{destination_port}/fhir")
    )
    async with running_engine(
        temporal_client,
        fhir_base_url,
        destinations_file=routing,
        pseudonym_key=PSEUDONYM_KEY,
        task_queue="careweave-fhir-destination-downtime",
        destination_failures_to_trip=TRIP_AFTER,
        replay_parallel_patients=4,
        replay_events_per_second=40,
    ) as running:
        yield running


@contextlib.contextmanager
def destination_server(port: int) -> Iterator[str]:
    with running_fhir_server(port) as base_url:
        yield base_url


def messages_for(number: str) -> list[str]:
    messages = []
    for n, (trigger, disposition) in enumerate(EVENTS, start=1):
        patient_stay = stay(f"V-{number}", f"MRN{number}", disposition=disposition or "01")
        messages.append(
            sm.adt_event(
                patient_stay, f"FD-{number}-{n}", trigger, when=datetime(2026, 11, 25, 9, n)
            )
        )
    return messages


def written(version: dict[str, Any]) -> tuple[str, str]:
    """Status and discharge disposition as sent (PV1-36) of one Encounter version."""
    disposition = version.get("hospitalization", {}).get("dischargeDisposition", {})
    return version["status"], disposition.get("text", "")


async def test_a_stopped_fhir_destination_gets_every_held_event_once_in_order(
    engine: Engine, destination_port: int
) -> None:
    # Not running: every attempt finds the port closed.
    for number in PATIENTS:
        await send(engine, *messages_for(number))
    down = await wait_health(
        engine, DESTINATION, lambda s: s.state is HealthState.DOWN, "down", timeout=90
    )
    assert down.down_by == "failures"
    total = len(PATIENTS) * len(EVENTS)
    held = await wait_health(
        engine, DESTINATION, lambda s: s.held_events == total, "holding every event", 90
    )
    assert held.held_queues == len(PATIENTS)
    probed = await wait_health(engine, DESTINATION, lambda s: s.last_probe, "probed")
    assert probed.last_probe.startswith("failed: GET metadata"), probed.last_probe

    with contextlib.ExitStack() as stack:
        # Started off the event loop: the worker runs on it and keeps probing meanwhile.
        base_url = await asyncio.to_thread(
            stack.enter_context, destination_server(destination_port)
        )
        done = await wait_health(
            engine,
            DESTINATION,
            lambda s: (
                s.state is HealthState.UP
                and s.replay is not None
                and s.replay.queues_done == len(PATIENTS)
            ),
            "up with the replay done",
            timeout=120,
        )
        assert done.replay is not None
        assert (done.replay.events_total, done.replay.events_done) == (total, total)
        # Back by its probe: no operator was involved at any point.
        rows = state_rows(engine, DESTINATION)
        assert rows[-1].startswith("down -> up by probe: GET metadata: 200"), rows
        assert not any("operator" in row for row in rows), rows

        async with FhirClient(base_url, timeout=10) as fhir:
            for number in PATIENTS:
                queue = engine.handle(delivery_id(DESTINATION, f"MRN{number}"))
                assert await queue.query("pending_review") is None
                log = await queue.query("delivery_log")
                assert [e["outcome"] for e in log] == ["delivered"] * len(EVENTS)

                [encounter] = await fhir.search("Encounter", {"identifier": f"V-{number}"})
                versions = await fhir.history("Encounter", encounter["id"])
                # The server's record of every write, oldest first (ms timestamps; events of
                # one queue are written one after the other, never within the same ms).
                stamps = [v["meta"]["lastUpdated"] for v in versions]
                assert len(set(stamps)) == len(stamps), stamps
                versions.sort(key=lambda v: v["meta"]["lastUpdated"])
                assert [written(v) for v in versions] == [
                    ("finished" if trigger == "A03" else "in-progress", disposition)
                    for trigger, disposition in EVENTS
                ], f"MRN{number}"
                assert len(await fhir.search("Patient", {"identifier": f"MRN{number}"})) == 1
        await asyncio.to_thread(stack.close)
