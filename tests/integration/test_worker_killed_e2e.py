"""A worker SIGKILLed in the middle of its work, end to end: `careweave worker` runs as a
process of its own and is killed with no chance to finish anything, then a new one is
started. During a downtime replay (a destination held by an operator, released, killed
while its queues drain) every held event still reaches the partner system
(partners/partner.js) once, in each patient's order; during an upstream batch
(`careweave ingest-batch`, which goes on committing while no worker runs) every message is
applied once, in clinical order. Patients MRN65xx (replay) and MRN92xx (batch).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from activities.destination_health import ensure_health_workflow
from exchanges.destination_health import health_policy
from models.destination_health import HealthState, OperatorCommand
from models.records import BatchStatus
from tests.integration.test_batch_ingest_e2e import a31, batch_file
from tests.support.cli import CAREWEAVE, careweave_environment
from tests.support.destination_health import wait_health
from tests.support.discharge import PSEUDONYM_KEY, delivery_id, received, send, stay
from tests.support.engine import Engine
from tests.support.partner import Partner, running_partner
from tests.support.patient_sync import PSEUDONYM_KEY as PATIENT_SYNC_KEY
from tests.support.patient_sync import patient_sync_id, wait_applied
from tests.support.separate_worker import engine_without_worker, kill, running_worker
from workers import sample_messages as sm
from workflows.destination_health import DestinationHealth

PATIENTS = [f"65{n:02d}" for n in range(1, 7)]
EVENTS = ["A03", "A13", "A03", "A13"]

ROUTING = """
version = "worker-killed-1"

[[destination]]
name = "primary-care"
kind = "mllp"
subscribes = ["A03", "A13"]
[destination.mllp]
host = "127.0.0.1"
port = {port}
receiving_application = "PCEHR"
receiving_facility = "NORTHCLINIC"
ack_timeout_seconds = 1.5
[destination.policy]
max_attempts = 3
first_retry_seconds = 0.2
max_retry_seconds = 1
"""


@pytest.fixture
def partner() -> Iterator[Partner]:
    with running_partner("primary-care") as running:
        yield running


def sent_at(n: int) -> str:
    return datetime(2026, 11, 25, 11, n).strftime("%Y%m%d%H%M%S")


def event_time(message: dict[str, Any]) -> str:
    """EVN-2 as sent: which of the patient's events this is."""
    [evn] = [s for s in message["text"].split("\r") if s.startswith("EVN|")]
    return str(evn.split("|")[2])


async def wait_acknowledged(partner: Partner, count: int, timeout: float = 120) -> None:
    """Until the partner has acknowledged ``count`` distinct messages."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    acknowledged: set[str] = set()
    while loop.time() < deadline:
        acknowledged = {m["control_id"] for m in await partner.amessages() if m["answered"] == "AA"}
        if len(acknowledged) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{partner.name} acknowledged {len(acknowledged)}, wanted {count}")


async def test_a_worker_killed_during_a_replay_leaves_nothing_lost_or_reordered(
    temporal_client: Client, fhir_base_url: str, partner: Partner, tmp_path: Path
) -> None:
    routing = tmp_path / "destinations.toml"
    routing.write_text(ROUTING.format(port=partner.mllp_port))
    total = len(PATIENTS) * len(EVENTS)
    async with engine_without_worker(
        temporal_client,
        fhir_base_url,
        tmp_path,
        destinations_file=routing,
        pseudonym_key=PSEUDONYM_KEY,
        task_queue="careweave-worker-killed-replay",
        destination_failures_to_trip=3,
        replay_parallel_patients=2,
        # Slow enough that the replay is still draining when the worker is killed.
        replay_events_per_second=6,
    ) as engine:
        health = await ensure_health_workflow(
            temporal_client,
            "primary-care",
            "mllp",
            health_policy(engine.settings),
            engine.settings.task_queue,
        )
        async with running_worker(engine, temporal_client) as first_worker:
            await health.execute_update(
                DestinationHealth.command,
                OperatorCommand(state=HealthState.DOWN, reason="maintenance", operator="ops"),
            )
            for number in PATIENTS:
                await send(
                    engine,
                    *[
                        sm.adt_event(
                            stay(f"V-{number}", f"MRN{number}"),
                            f"WK-{number}-{n}",
                            trigger,
                            when=datetime(2026, 11, 25, 11, n),
                        )
                        for n, trigger in enumerate(EVENTS, start=1)
                    ],
                )
            await wait_health(
                engine, "primary-care", lambda s: s.held_events == total, "holding all", 90
            )
            assert await partner.amessages() == []
            await health.execute_update(
                DestinationHealth.command,
                OperatorCommand(state=HealthState.UP, reason="done", operator="ops"),
            )
            await wait_acknowledged(partner, total // 3)
            await kill(first_worker)
        killed_at = len({m["control_id"] for m in await partner.amessages()})
        assert killed_at < total, "the replay was over before the worker was killed"

        async with running_worker(engine, temporal_client):
            await wait_acknowledged(partner, total)
            done = await wait_health(
                engine,
                "primary-care",
                lambda s: s.replay is not None and s.replay.queues_done == len(PATIENTS),
                "done replaying",
                timeout=120,
            )
            assert done.state is HealthState.UP
            for number in PATIENTS:
                queue = engine.handle(delivery_id("primary-care", f"MRN{number}"))
                assert await queue.query("pending_review") is None
                log = await queue.query("delivery_log")
                assert [e["outcome"] for e in log] == ["delivered"] * len(EVENTS)

    everything = await partner.amessages()
    receipts = Counter(m["control_id"] for m in everything)
    assert len(receipts) == total
    for number in PATIENTS:
        messages = await received(partner, f"V-{number}")
        assert {m["answered"] for m in messages} == {"AA"}
        firsts = list({m["control_id"]: event_time(m) for m in messages}.values())
        assert firsts == [sent_at(n) for n in range(1, len(EVENTS) + 1)], f"MRN{number}"
        # Once each; the one exception Careweave cannot rule out is the message whose ACK
        # arrived in the instant before the kill, before its activity completed: resent
        # next, under the same MSH-10, before anything after it.
        times = [event_time(m) for m in messages]
        assert times == sorted(times), f"MRN{number}: {times}"
    twice = [control_id for control_id, count in receipts.items() if count > 1]
    assert all(receipts[c] == 2 for c in twice)
    assert len(twice) <= 2  # at most one in flight per queue released at once


async def test_a_worker_killed_while_a_delivery_waits_for_its_ack_is_replaced_promptly(
    temporal_client: Client, fhir_base_url: str, partner: Partner, tmp_path: Path
) -> None:
    """The delivery activity beats while it waits for the ACK: a worker that dies then is
    noticed after the heartbeat timeout (15 s) and the event sent again, under the same
    MSH-10, by the next worker; not held for the activity's 120 s time limit."""
    routing = tmp_path / "destinations.toml"
    # The partner takes its time to answer: the worker dies while the send waits.
    routing.write_text(
        ROUTING.format(port=partner.mllp_port).replace(
            "ack_timeout_seconds = 1.5", "ack_timeout_seconds = 100"
        )
    )
    mrn = "MRN6601"
    async with engine_without_worker(
        temporal_client,
        fhir_base_url,
        tmp_path,
        destinations_file=routing,
        pseudonym_key=PSEUDONYM_KEY,
        task_queue="careweave-worker-killed-ack-wait",
    ) as engine:
        await partner.aset_mode("silent", patient_id=mrn)
        async with running_worker(engine, temporal_client) as first_worker:
            await send(engine, sm.adt_event(stay("V-6601", mrn), "WK-6601-1", "A03"))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while not await partner.amessages():
                assert loop.time() < deadline, "the partner never got the discharge"
                await asyncio.sleep(0.1)
            await kill(first_worker)
        await partner.aset_mode("AA")
        async with running_worker(engine, temporal_client):
            # Well inside the 120 s the activity may run: only a heartbeat timeout ends it.
            await wait_acknowledged(partner, 1, timeout=80)
    messages = await partner.amessages()
    assert [m["answered"] for m in messages][-1] == "AA"
    assert len({m["control_id"] for m in messages}) == 1  # the same MSH-10, sent again


async def wait_ledger(
    engine: Engine, digest: str, applied: int, batch: asyncio.subprocess.Process
) -> None:
    """Until the batch's ledger row has ``applied`` messages, the batch still running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    row = None
    while loop.time() < deadline:
        row = engine.store.batch_ledger().get(digest)
        if row is not None and row.applied >= applied:
            return
        assert batch.returncode is None, "the batch ended before it could be interrupted"
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch ledger {row!r}, wanted {applied} applied")


async def test_a_worker_killed_during_a_batch_applies_every_message_once_in_order(
    temporal_client: Client, fhir_base_url: str, tmp_path: Path
) -> None:
    messages = [
        a31("MRN9201", f"BT-WK-{n}", f"2026120310{n:02d}00+0000", f"{n} Kill St")
        for n in range(1, 13)
    ]
    path = tmp_path / "downtime-ward12.hl7"
    path.write_bytes(batch_file(*reversed(messages)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    async with engine_without_worker(
        temporal_client,
        fhir_base_url,
        tmp_path,
        pseudonym_key=PATIENT_SYNC_KEY,
        # Open long enough that every message lands in one run of the patient's exchange,
        # whose `applied_messages` then tells their order.
        patient_sync_close_after_seconds=120.0,
        task_queue="careweave-worker-killed-batch",
    ) as engine:
        ledger = engine.store.batch_ledger()
        exchange = engine.handle(patient_sync_id("MRN9201"))
        async with running_worker(engine, temporal_client) as first_worker:
            batch = await asyncio.create_subprocess_exec(
                str(CAREWEAVE),
                "ingest-batch",
                str(path),
                "--rate",
                "4/s",
                env=careweave_environment(
                    engine, temporal_client, {"CAREWEAVE_PSEUDONYM_KEY": PATIENT_SYNC_KEY}
                ),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            # Killed once it has applied some of the batch, with more on their way.
            await wait_ledger(engine, digest, 2, batch)
            await wait_applied(exchange, 2, timeout=60)
            await kill(first_worker)
        row = ledger.get(digest)
        assert row is not None and row.applied < len(messages), "over before the kill"
        # The batch goes on without a worker: Temporal takes each message durably.
        await wait_ledger(engine, digest, 6, batch)

        async with running_worker(engine, temporal_client):
            output, _ = await asyncio.wait_for(batch.communicate(), 120)
            assert batch.returncode == 0, output.decode()
            applied = await wait_applied(exchange, len(messages), timeout=60)
            assert [m["control_id"] for m in applied] == [f"BT-WK-{n}" for n in range(1, 13)]
            row = ledger.get(digest)
            assert row is not None
            assert (row.status, row.applied) == (BatchStatus.DONE.value, len(messages))
