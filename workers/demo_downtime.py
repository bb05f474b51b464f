"""The demo's downtime part: an operator takes the billing partner down (the update that
`careweave destination down` sends), a few discharges arrive and are held by their
per-patient queues, billing comes back up and the replay delivers them in order; the demo
prints the held count, the replay's progress as the Temporal UI shows it, and what billing
received. Counts, destination names and Careweave's MSH-10s only: no patient data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from temporalio.client import WorkflowHandle

from activities.destination_health import ensure_health_workflow
from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient
from exchanges.destination_health import health_policy
from models.destination_health import DestinationStatus, HealthState, OperatorCommand
from workers import sample_messages as sm
from workers.stack import RunningStack
from workflows.destination_health import DestinationHealth, replay_details

DESTINATION = "billing"
OPERATOR = "demo"


def downtime_feed(run_tag: str) -> list[str]:
    """Three patients discharged while billing is down (the MSH-10s carry run_tag)."""
    return [
        sm.adt_event(
            sm.SampleStay(
                f"VD{run_tag}{n}",
                patient=sm.SamplePatient(mrn=f"MRN{run_tag}{n}", family="Demodown", given=given),
            ),
            f"{run_tag}-D{n}",
            "A03",
        )
        for n, given in enumerate(("Adelheid", "Benedikt", "Cleopatra"), start=1)
    ]


async def show_downtime(stack: RunningStack, console: Console, run_tag: str) -> None:
    partner = next((p for p in stack.partners if p.name == DESTINATION), None)
    if partner is None:
        return  # the routing file has no loopback billing partner to take down
    health = await ensure_health_workflow(
        stack.client,
        DESTINATION,
        "mllp",
        health_policy(stack.settings),
        stack.settings.task_queue,
    )
    console.print(
        f"\n[bold]Downtime:[/bold] operator takes {DESTINATION} down "
        "(`careweave destination down billing --reason ...`)"
    )
    await health.execute_update(
        DestinationHealth.command,
        OperatorCommand(state=HealthState.DOWN, reason="demo: vendor upgrade", operator=OPERATOR),
    )
    messages = downtime_feed(run_tag)
    async with MllpClient("127.0.0.1", stack.gateway.port, timeout=30) as mllp:
        for message in messages:
            code, _, error = parse_ack(await mllp.send(message))
            if code != "AA":
                console.print(f"[red]gateway answered {code} {error}[/red]")
                return
    console.print(f"{len(messages)} discharges (ADT^A03) sent through the gateway, each ACKed AA")
    held = await _wait(
        console,
        health,
        lambda s: s.held_events >= len(messages),
        "waiting for the queues to hold...",
    )
    console.print(
        f"{DESTINATION} {held.state.value} ({held.down_by}): {held.held_events} event(s) held "
        f"in {held.held_queues} patient queue(s); the partner got none of them: "
        f"{len(await _received(partner.control_url, run_tag))} received"
    )
    console.print(f"operator brings {DESTINATION} up (`careweave destination up ...`)")
    await health.execute_update(
        DestinationHealth.command,
        OperatorCommand(state=HealthState.UP, reason="demo: upgrade done", operator=OPERATOR),
    )
    done = await _wait(console, health, lambda s: s.replay_finished, "replaying...")
    console.print(f"{DESTINATION} {done.state.value}; {replay_details(done).removeprefix('; ')}")
    table = Table(title=f"What {DESTINATION} received once up (replayed, each once)")
    for column in ("message", "MSH-10 (Careweave's)", "answered"):
        table.add_column(column, no_wrap=True)
    for record in await _received(partner.control_url, run_tag):
        table.add_row(record["message_type"], record["control_id"], record["answered"])
    console.print(table)


async def _wait(
    console: Console,
    health: WorkflowHandle[Any, None],
    check: Callable[[DestinationStatus], bool],
    text: str,
    seconds: float = 60,
) -> DestinationStatus:
    deadline = time.monotonic() + seconds
    status: DestinationStatus = await health.query(DestinationHealth.status)
    with console.status(text):
        while not check(status) and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            status = await health.query(DestinationHealth.status)
    return status


async def _received(control_url: str, run_tag: str) -> list[dict[str, str]]:
    async with httpx.AsyncClient(timeout=5) as http:
        records: list[dict[str, str]] = (await http.get(f"{control_url}/messages")).json()
    return [r for r in records if f"|VD{run_tag}" in r["text"]]
