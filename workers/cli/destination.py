"""`careweave destination down|up|status NAME`: a destination's health, as its health
workflow keeps it (workflows/destination_health.py), through the Temporal client the other
commands use. An operator's down holds every delivery to it until an operator's up; each
command is on the audit trail under the OS user, and the change itself under the worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
from typing import Annotated

import typer
from rich.table import Table
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from activities.destination_health import ensure_health_workflow
from exchanges.destination_health import health_policy
from models.audit import AuditAction
from models.destination_health import (
    DestinationStatus,
    HealthState,
    OperatorCommand,
    health_workflow_id,
)
from models.destinations import RoutingConfigError, load_routing
from models.settings import Settings, load_settings
from workers.cli.common import (
    connect_temporal,
    console,
    console_user_entry,
    fail,
    open_audit_log,
)
from workflows.destination_health import DestinationHealth

app = typer.Typer(
    name="destination", help="A destination's health: hold and release", no_args_is_help=True
)

ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the history)")]


@app.command("down")
def destination_down(name: str, reason: ReasonOption) -> None:
    """Hold every delivery to NAME until `careweave destination up` (no probe lifts it)."""
    _command(name, HealthState.DOWN, reason)


@app.command("up")
def destination_up(name: str, reason: ReasonOption) -> None:
    """Release NAME: its held deliveries drain in order at the configured replay rate."""
    _command(name, HealthState.UP, reason)


@app.command("status")
def destination_status(name: str) -> None:
    """State, since when, held events and the oldest's age, last probe, replay progress."""
    settings = load_settings()
    _destination_kind(settings, name)
    status = asyncio.run(_status(settings, name))
    if status is None:
        console.print(f"{name}: up (no delivery has asked about it since the last restart)")
        return
    console.print(status_table(status, dt.datetime.now(dt.UTC)))


def status_table(status: DestinationStatus, now: dt.datetime) -> Table:
    table = Table(title=f"Destination {status.destination} ({status.kind})")
    table.add_column("state", no_wrap=True)
    for column in ("since", "reason", "held", "oldest held", "last probe", "replay"):
        # The figures an operator reads at a glance are never broken across lines.
        table.add_column(column, no_wrap=column in ("since", "held", "oldest held"))
    colour = {"up": "green", "degraded": "yellow", "down": "red"}[status.state.value]
    replay = "-"
    if status.replay is not None:
        progress = status.replay
        replay = (
            f"{progress.queues_done} of {progress.queues_total} patients, "
            f"{progress.events_done} of {progress.events_total} events"
        )
    table.add_row(
        f"[{colour}]{status.state.value}[/{colour}]"
        + (f" ({status.down_by})" if status.down_by else ""),
        _when(status.since),
        status.reason or "-",
        f"{status.held_events} event(s) in {status.held_queues} queue(s)",
        _age(status.oldest_held_at, now),
        f"{_when(status.last_probe_at)} {status.last_probe}" if status.last_probe_at else "-",
        replay,
    )
    return table


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _age(moment: dt.datetime | None, now: dt.datetime) -> str:
    if moment is None:
        return "-"
    seconds = max(int((now - moment).total_seconds()), 0)
    return str(dt.timedelta(seconds=seconds))


def _destination_kind(settings: Settings, name: str) -> str:
    try:
        routing = load_routing(settings.destinations_file)
    except RoutingConfigError as err:
        raise fail(str(err)) from err
    try:
        return routing.destination(name).kind
    except KeyError:
        known = ", ".join(d.name for d in routing.destinations)
        raise fail(
            f"no destination {name!r} in {settings.destinations_file} (known: {known})"
        ) from None


def _command(name: str, state: HealthState, reason: str) -> None:
    if not reason.strip():
        raise fail("--reason must say why")
    settings = load_settings()
    kind = _destination_kind(settings, name)
    operator = getpass.getuser()
    command = OperatorCommand(state=state, reason=reason.strip(), operator=operator)
    status = asyncio.run(_send_command(settings, name, kind, command))
    open_audit_log(settings).append(
        console_user_entry(
            AuditAction.DESTINATION_STATE, f"Destination/{name}", f"{state.value} requested"
        )
    )
    console.print(status_table(status, dt.datetime.now(dt.UTC)))


async def _send_command(
    settings: Settings, name: str, kind: str, command: OperatorCommand
) -> DestinationStatus:
    client = await connect_temporal(settings)
    handle = await ensure_health_workflow(
        client, name, kind, health_policy(settings), settings.task_queue
    )
    try:
        return await handle.execute_update(DestinationHealth.command, command)
    except WorkflowUpdateFailedError as err:
        raise fail(f"refused: {err.cause}") from err


async def _status(settings: Settings, name: str) -> DestinationStatus | None:
    client = await connect_temporal(settings)
    handle = client.get_workflow_handle_for(DestinationHealth.run, health_workflow_id(name))
    try:
        return await handle.query(DestinationHealth.status)
    except RPCError as err:
        if "not found" in str(err).lower():
            return None
        raise fail(f"cannot read the health of {name}: {err}") from err
