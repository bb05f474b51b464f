"""`careweave destination down|up|pause|resume|status|watch NAME`: a destination's health, as
its health workflow keeps it (workflows/destination_health.py), through the Temporal client
the other commands use. An operator's down holds every delivery to it until an operator's
up; pause holds a replay (the event in hand is finished) until resume; watch draws the
replay's progress until it is done. Each command is on the audit trail under the OS user,
and the change itself under the worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError

from activities.destination_health import ensure_health_workflow
from exchanges.destination_health import health_policy
from models.audit import AuditAction
from models.destination_health import (
    DestinationStatus,
    HealthState,
    OperatorCommand,
    ReplayAction,
    ReplayCommand,
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
from workflows.destination_health import DestinationHealth, replay_details

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


@app.command("pause")
def destination_pause(name: str, reason: ReasonOption) -> None:
    """Pause NAME's replay: queues sending finish the event in hand, then wait; none is
    released until `careweave destination resume` (also allowed while NAME is down)."""
    _replay_command(name, ReplayAction.PAUSE, reason)


@app.command("resume")
def destination_resume(name: str, reason: ReasonOption) -> None:
    """Resume NAME's paused replay where it stopped, in the same order."""
    _replay_command(name, ReplayAction.RESUME, reason)


@app.command("watch")
def destination_watch(
    name: str,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between two looks")
    ] = 0.5,
) -> None:
    """A progress bar of NAME's replay until it is done (exit 0). Ctrl-C stops watching,
    not the replay."""
    settings = load_settings()
    _destination_kind(settings, name)
    try:
        asyncio.run(_watch(settings, name, interval))
    except KeyboardInterrupt:
        console.print("stopped watching; the replay goes on")
        raise typer.Exit(code=130) from None


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
    replay = replay_summary(status)
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


def replay_summary(status: DestinationStatus) -> str:
    """The replay cell of the status table and the watch's last line: counts, no PHI."""
    return replay_details(status).removeprefix("; ") or "-"


def replay_stage(status: DestinationStatus) -> str:
    """What the replay is doing, in the words the progress bar shows beside it."""
    if status.state is HealthState.DOWN:
        waiting = f"{status.held_events} event(s) held in {status.held_queues} queue(s)"
        paused = ", replay paused" if status.replay_paused else ""
        return f"down ({waiting}{paused}): waiting for it to come back"
    if status.replay is None:
        return "no replay: nothing was held"
    if status.replay_finished:
        return "replay done"
    if status.replay_paused:
        return f"paused ({status.reason})"
    return (
        f"replaying: {status.replaying_queues} patient queue(s) sending, "
        f"{status.held_queues} waiting their turn"
    )


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


def _replay_command(name: str, action: ReplayAction, reason: str) -> None:
    if not reason.strip():
        raise fail("--reason must say why")
    settings = load_settings()
    kind = _destination_kind(settings, name)
    command = ReplayCommand(action=action, reason=reason.strip(), operator=getpass.getuser())
    status = asyncio.run(_send_replay_command(settings, name, kind, command))
    open_audit_log(settings).append(
        console_user_entry(
            AuditAction.DESTINATION_STATE, f"Destination/{name}", f"replay {action.value} requested"
        )
    )
    console.print(status_table(status, dt.datetime.now(dt.UTC)))


async def _send_replay_command(
    settings: Settings, name: str, kind: str, command: ReplayCommand
) -> DestinationStatus:
    client = await connect_temporal(settings)
    handle = await ensure_health_workflow(
        client, name, kind, health_policy(settings), settings.task_queue
    )
    try:
        return await handle.execute_update(DestinationHealth.replay_control, command)
    except WorkflowUpdateFailedError as err:
        raise fail(f"refused: {err.cause}") from err


async def _watch(settings: Settings, name: str, interval: float) -> None:
    client = await connect_temporal(settings)
    status = await _query_status(client, name)
    if status is None or (status.replay is None and status.state is not HealthState.DOWN):
        console.print(f"{name}: no replay: nothing is held")
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events, {task.fields[patients]}  {task.fields[stage]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(name, total=None, patients="", stage="")
        while True:
            view = replay_view(status)
            bar.update(
                task,
                total=view.total,
                completed=view.completed,
                patients=view.patients,
                stage=view.stage,
            )
            if status.replay_finished:
                break
            await asyncio.sleep(interval)
            status = await _query_status(client, name)
            if status is None:
                raise fail(f"the health workflow of {name} is gone")
    console.print(f"{name}: {replay_summary(status)}")


@dataclass(frozen=True)
class ReplayView:
    """One look at a replay, as the progress bar draws it: ``total`` None (a pulsing bar)
    until the destination is up and the replay has counted what it holds."""

    total: int | None
    completed: int
    patients: str
    stage: str


def replay_view(status: DestinationStatus) -> ReplayView:
    replay = status.replay
    if status.state is HealthState.DOWN or replay is None:
        return ReplayView(
            None, 0, f"{status.held_queues} patient queue(s) held", replay_stage(status)
        )
    return ReplayView(
        total=max(replay.events_total, replay.events_done),
        completed=replay.events_done,
        patients=f"{replay.queues_done} of {replay.queues_total} patients",
        stage=replay_stage(status),
    )


async def _status(settings: Settings, name: str) -> DestinationStatus | None:
    return await _query_status(await connect_temporal(settings), name)


async def _query_status(client: Client, name: str) -> DestinationStatus | None:
    handle = client.get_workflow_handle_for(DestinationHealth.run, health_workflow_id(name))
    try:
        return await handle.query(DestinationHealth.status)
    except RPCError as err:
        if "not found" in str(err).lower():
            return None
        raise fail(f"cannot read the health of {name}: {err}") from err
