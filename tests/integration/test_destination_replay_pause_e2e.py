"""An operator pauses and resumes a destination's replay, end to end: the billing partner
(partners/partner.js) is taken down by `careweave destination down`, discharge events for
three patients are held, `careweave destination pause` before `up` keeps every queue held,
`resume` starts the replay, and a pause in the middle of it (the replay is slow: one patient
at a time, 4 s between a queue's sends) lets the queue sending finish the event in hand and
then nothing more reaches the partner, until `resume`; then every event arrives once, in
each patient's order. `careweave destination watch` draws it to the end. Patients MRN69xx.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client

from activities.destination_health import ensure_health_workflow
from exchanges.destination_health import health_policy
from models.audit import AuditAction
from models.destination_health import (
    DestinationStatus,
    HealthState,
    ReplayAction,
    ReplayCommand,
    health_workflow_id,
)
from tests.support.cli import CAREWEAVE, careweave, careweave_environment
from tests.support.discharge import (
    delivery_id,
    received,
    running_discharge_engine,
    send,
    stay,
    triggers,
    wait_alert,
    wait_received,
)
from tests.support.engine import Engine
from tests.support.partner import Partner
from workers import sample_messages as sm
from workflows.destination_health import DestinationHealth

PACE_SECONDS = 4.0
PATIENTS = ["6901", "6902", "6903"]


@pytest.fixture(scope="module")
async def engine(
    temporal_client: Client,
    fhir_base_url: str,
    partners: dict[str, Partner],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    async with running_discharge_engine(
        temporal_client,
        fhir_base_url,
        partners,
        tmp_path_factory.mktemp("routing"),
        task_queue="careweave-destination-replay-pause",
        # One patient at a time, a send every PACE_SECONDS: a pause lands between two sends.
        replay_parallel_patients=1,
        replay_events_per_second=1 / PACE_SECONDS,
    ) as running:
        yield running


def health_handle(engine: Engine) -> Any:
    return engine.client.get_workflow_handle_for(
        DestinationHealth.run, health_workflow_id("billing")
    )


async def health(engine: Engine) -> DestinationStatus:
    status: DestinationStatus = await health_handle(engine).query(DestinationHealth.status)
    return status


async def wait_health(engine: Engine, check: Any, what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status = None
    while loop.time() < deadline:
        status = await health(engine)
        if check(status):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"billing: health never {what}: {status!r}")


async def current_details(engine: Engine) -> str:
    """What the Temporal UI shows as the health workflow's current details."""
    metadata = await health_handle(engine).query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    details: str = metadata.current_details
    return details


async def billing_counts(billing: Partner) -> dict[str, int]:
    return {number: len(await received(billing, f"V-{number}")) for number in PATIENTS}


async def test_a_paused_replay_sends_nothing_more_until_resumed(
    engine: Engine, temporal_client: Client, partners: dict[str, Partner]
) -> None:
    billing = partners["billing"]
    # Started here with the engine's slow replay policy (the policy is fixed by whoever
    # starts the health workflow; the CLI's own settings would give the default rate).
    await ensure_health_workflow(
        engine.client,
        "billing",
        "mllp",
        health_policy(engine.settings),
        engine.settings.task_queue,
    )
    env = {"CAREWEAVE_DESTINATIONS_FILE": str(engine.settings.destinations_file)}

    async def cli(*args: str) -> str:
        code, output = await careweave(engine, temporal_client, "destination", *args, env=env)
        assert code == 0, output
        return output

    code, output = await careweave(
        engine, temporal_client, "destination", "pause", "billing", "--reason", "x", env=env
    )
    assert code == 1 and "nothing to pause" in output, output
    await cli("down", "billing", "--reason", "vendor upgrade")
    code, output = await careweave(
        engine, temporal_client, "destination", "resume", "billing", "--reason", "x", env=env
    )
    assert code == 1 and "not paused" in output, output

    for number in PATIENTS:
        patient_stay = stay(f"V-{number}", f"MRN{number}")
        await send(
            engine,
            sm.adt_event(patient_stay, f"RP-{number}-1", "A03"),
            sm.adt_event(patient_stay, f"RP-{number}-2", "A13"),
        )
    await wait_health(engine, lambda s: s.held_events == 2 * len(PATIENTS), "all held")

    # Paused while still down: bringing it up releases nobody.
    output = await cli("pause", "billing", "--reason", "reconcile first")
    assert "paused" in output, output
    await cli("up", "billing", "--reason", "upgrade done")
    status = await health(engine)
    assert status.state is HealthState.UP and status.replay_paused
    assert (status.held_queues, status.replaying_queues) == (len(PATIENTS), 0)
    assert await billing_counts(billing) == dict.fromkeys(PATIENTS, 0)

    await cli("resume", "billing", "--reason", "reconciled")
    first = PATIENTS[0]
    await wait_received(billing, f"V-{first}", 1)
    # Mid-replay, between the first patient's two sends (PACE_SECONDS apart).
    paused = await health_handle(engine).execute_update(
        DestinationHealth.replay_control,
        ReplayCommand(action=ReplayAction.PAUSE, reason="partner asked", operator="ops-2"),
    )
    assert paused.replay_paused
    await wait_alert(engine, delivery_id("billing", f"MRN{first}"), "held")
    at_pause = await billing_counts(billing)
    assert at_pause == {first: 1, PATIENTS[1]: 0, PATIENTS[2]: 0}, at_pause
    details = await current_details(engine)
    assert details.endswith("; replay: 0 of 6 events, 0 of 3 patients (paused)"), details
    # Twice the pace: unpaused, the first patient's A13 would have been sent by now.
    await asyncio.sleep(2 * PACE_SECONDS)
    assert await billing_counts(billing) == at_pause
    status = await health(engine)
    assert (status.replaying_queues, status.held_queues) == (1, len(PATIENTS) - 1)

    watch = await asyncio.create_subprocess_exec(
        str(CAREWEAVE),
        "destination",
        "watch",
        "billing",
        env=careweave_environment(engine, temporal_client, env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    await cli("resume", "billing", "--reason", "partner ready")
    watched, _ = await asyncio.wait_for(watch.communicate(), 120)
    assert watch.returncode == 0, watched.decode()
    assert "billing: replay: 6 of 6 events, 3 of 3 patients (done)" in watched.decode()

    acknowledged: list[str] = []
    for number in PATIENTS:
        messages = await wait_received(billing, f"V-{number}", 2)
        assert triggers(messages) == ["A03", "A13"]  # the patient's order
        assert [m["answered"] for m in messages] == ["AA", "AA"]  # each sent once
        acknowledged += [m["control_id"] for m in messages]
        log = await engine.handle(delivery_id("billing", f"MRN{number}")).query("delivery_log")
        assert [e["outcome"] for e in log] == ["delivered", "delivered"]
    assert len(acknowledged) == len(set(acknowledged)) == 2 * len(PATIENTS)
    status = await health(engine)
    assert status.replay_finished and not status.replay_paused
    assert (await current_details(engine)).endswith(
        "; replay: 6 of 6 events, 3 of 3 patients (done)"
    )

    changes = [
        row.detail or ""
        for row in engine.store.audit_log().records(exchange=health_workflow_id("billing"))
        if row.action == AuditAction.DESTINATION_STATE
    ]
    operator = getpass.getuser()
    for expected in (
        f"down -> down by operator {operator}: replay paused by operator command",
        f"up -> up by operator {operator}: replay resumed by operator command",
        "up -> up by operator ops-2: replay paused by operator command",
    ):
        assert any(c.startswith(expected) for c in changes), (expected, changes)
    console_rows = {
        row.detail
        for row in engine.store.audit_log().records()
        if row.action == AuditAction.DESTINATION_STATE and row.actor_kind == "user"
    }
    assert {"replay pause requested", "replay resume requested"} <= console_rows
