"""Destination downtime end to end: discharge events to a partner system
(partners/partner.js) that goes silent are held by their per-patient queues, not sent to
review; the destination's health workflow trips down on the run of failures, probes it, and
comes back up once the partner answers; the held events then reach the partner in each
patient's order, every one under its original MSH-10 and acknowledged once. An operator's
`careweave destination down` / `up` holds and releases the same way. Patients MRN62xx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client

from models.audit import AuditAction
from models.destination_health import (
    HealthState,
    OperatorCommand,
    ReplayAction,
    ReplayCommand,
    health_workflow_id,
)
from tests.support.cli import careweave
from tests.support.destination_health import health, state_rows, wait_health
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
        task_queue="careweave-destination-downtime",
        # primary-care gives each event 3 attempts: 3 outage failures across its queues
        # trip it before any one queue can spend its budget.
        destination_failures_to_trip=3,
        replay_parallel_patients=2,
        replay_events_per_second=20,
    ) as running:
        yield running


async def test_a_silent_partner_holds_its_queues_and_the_replay_keeps_order_once(
    engine: Engine, partners: dict[str, Partner]
) -> None:
    primary_care = partners["primary-care"]
    patients = [f"62{n:02d}" for n in range(1, 5)]
    await primary_care.aset_mode("silent")
    try:
        for number in patients:
            patient_stay = stay(f"V-{number}", f"MRN{number}")
            await send(
                engine,
                sm.adt_event(patient_stay, f"DS-{number}-1", "A03"),
                sm.adt_event(patient_stay, f"DS-{number}-2", "A13"),
            )
        down = await wait_health(
            engine, "primary-care", lambda s: s.state is HealthState.DOWN, "down"
        )
        assert down.down_by == "failures"
        for number in patients:
            await wait_alert(engine, delivery_id("primary-care", f"MRN{number}"), "held")
        held = await wait_health(
            engine, "primary-care", lambda s: s.held_events == 2 * len(patients), "all held"
        )
        assert held.held_queues == len(patients)
        assert held.oldest_held_at is not None
        probed = await wait_health(engine, "primary-care", lambda s: s.last_probe, "probed")
        assert probed.last_probe.startswith("failed: NMQ: no ACK"), probed.last_probe
        for number in patients:
            queue = engine.handle(delivery_id("primary-care", f"MRN{number}"))
            assert await queue.query("pending_review") is None
    finally:
        await primary_care.aset_mode("AA")

    await wait_health(
        engine,
        "primary-care",
        lambda s: (
            s.state is HealthState.UP
            and s.replay is not None
            and s.replay.queues_done == len(patients)
        ),
        "up with the replay done",
    )
    acknowledged: list[str] = []
    for number in patients:
        messages = await wait_received(primary_care, f"V-{number}", 2)
        assert triggers(messages) == ["A03", "A13"]  # the patient's order, never rotated
        answered = [m["control_id"] for m in messages if m["answered"] == "AA"]
        unanswered = {m["control_id"] for m in messages if m["answered"] == "none"}
        assert len(answered) == 2
        # What the silent partner got before is the same delivery, under the same MSH-10.
        assert unanswered <= set(answered)
        acknowledged += answered
        queue = engine.handle(delivery_id("primary-care", f"MRN{number}"))
        assert await queue.query("pending_review") is None
        log = await queue.query("delivery_log")
        assert [e["outcome"] for e in log] == ["delivered", "delivered"]
    assert len(acknowledged) == len(set(acknowledged))  # each MSH-10 acknowledged once
    assert state_rows(engine, "primary-care")[-3:] == [
        "up -> degraded by failures: a delivery found it unavailable",
        "degraded -> down by failures: 3 failed deliveries in a row",
        "down -> up by probe: NMQ: AA",
    ]


async def test_an_operator_holds_and_releases_a_destination_by_cli(
    engine: Engine, temporal_client: Client, partners: dict[str, Partner]
) -> None:
    billing = partners["billing"]
    env = {"CAREWEAVE_DESTINATIONS_FILE": str(engine.settings.destinations_file)}
    code, output = await careweave(
        engine,
        temporal_client,
        "destination",
        "down",
        "billing",
        "--reason",
        "vendor upgrade",
        env=env,
    )
    assert code == 0, output
    assert "down" in output and "operator" in output
    patients = ["6211", "6212"]
    for number in patients:
        await send(
            engine, sm.adt_event(stay(f"V-{number}", f"MRN{number}"), f"DS-{number}-1", "A03")
        )
    for number in patients:
        await wait_alert(engine, delivery_id("billing", f"MRN{number}"), "held")
    # Held before any attempt: the partner has seen nothing of them.
    for number in patients:
        assert await received(billing, f"V-{number}") == []
    code, output = await careweave(
        engine, temporal_client, "destination", "status", "billing", env=env
    )
    assert code == 0, output
    assert "down (operator)" in output and "2 event(s) in 2 queue(s)" in output, output

    code, output = await careweave(
        engine,
        temporal_client,
        "destination",
        "up",
        "billing",
        "--reason",
        "upgrade done",
        env=env,
    )
    assert code == 0, output
    for number in patients:
        messages = await wait_received(billing, f"V-{number}", 1)
        assert [m["answered"] for m in messages] == ["AA"]
    status = await health(engine, "billing")
    assert status.state is HealthState.UP
    rows = state_rows(engine, "billing")
    assert any(r.startswith("up -> down by operator ") for r in rows), rows
    assert any(r.startswith("down -> up by operator ") for r in rows), rows
    console_rows = [
        (row.resource, row.detail)
        for row in engine.store.audit_log().records()
        if row.action == AuditAction.DESTINATION_STATE and row.actor_kind == "user"
    ]
    assert ("Destination/billing", "down requested") in console_rows
    assert ("Destination/billing", "up requested") in console_rows


async def test_an_unknown_destination_is_named(engine: Engine, temporal_client: Client) -> None:
    env = {"CAREWEAVE_DESTINATIONS_FILE": str(engine.settings.destinations_file)}
    code, output = await careweave(
        engine, temporal_client, "destination", "down", "nowhere", "--reason", "x", env=env
    )
    assert code == 1
    assert "no destination 'nowhere'" in output and "billing" in output


async def test_a_queue_held_behind_a_replay_counts_in_it(
    engine: Engine, partners: dict[str, Partner]
) -> None:
    """A patient whose first event comes while others wait their turn in the replay is held
    behind them and replayed with them: the replay's totals grow by it, so its progress
    ends at "n of n" (and looks finished) instead of "done" outgrowing "total"."""
    billing = partners["billing"]
    handle = engine.client.get_workflow_handle_for(
        DestinationHealth.run, health_workflow_id("billing")
    )

    async def operator(command: OperatorCommand | ReplayCommand) -> None:
        if isinstance(command, OperatorCommand):
            await handle.execute_update(DestinationHealth.command, command)
        else:
            await handle.execute_update(DestinationHealth.replay_control, command)

    # Started by the first delivery to billing; made sure of here.
    await send(engine, sm.adt_event(stay("V-6220", "MRN6220"), "DS-6220-1", "A03"))
    await wait_received(billing, "V-6220", 1)
    await operator(OperatorCommand(state=HealthState.DOWN, reason="upgrade", operator="ops-1"))
    first = ["6221", "6222", "6223"]
    for number in first:
        await send(
            engine, sm.adt_event(stay(f"V-{number}", f"MRN{number}"), f"DS-{number}-1", "A03")
        )
    await wait_health(engine, "billing", lambda s: s.held_events == len(first), "holding")
    await operator(ReplayCommand(action=ReplayAction.PAUSE, reason="wait", operator="ops-1"))
    await operator(OperatorCommand(state=HealthState.UP, reason="done", operator="ops-1"))
    up = await wait_health(engine, "billing", lambda s: s.state is HealthState.UP, "up")
    assert up.replay is not None
    assert (up.replay.queues_total, up.replay.events_total) == (3, 3)

    # Comes while the replay (paused, nothing released) still holds the first three.
    await send(engine, sm.adt_event(stay("V-6224", "MRN6224"), "DS-6224-1", "A03"))
    joined = await wait_health(engine, "billing", lambda s: s.held_events == 4, "holding 4")
    assert joined.replay is not None
    assert (joined.replay.queues_total, joined.replay.events_total) == (4, 4)
    assert await received(billing, "V-6224") == []

    await operator(ReplayCommand(action=ReplayAction.RESUME, reason="go", operator="ops-1"))
    done = await wait_health(engine, "billing", lambda s: s.replay_finished, "replayed")
    assert done.replay is not None
    assert (done.replay.queues_done, done.replay.queues_total) == (4, 4)
    assert (done.replay.events_done, done.replay.events_total) == (4, 4)
    for number in [*first, "6224"]:
        assert triggers(await wait_received(billing, f"V-{number}", 1)) == ["A03"]
