"""A destination's health workflow under test: its status query, polled until a condition
holds, and the audit rows of its changes of state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from models.audit import AuditAction
from models.destination_health import DestinationStatus, health_workflow_id
from tests.support.engine import Engine
from workflows.destination_health import DestinationHealth


async def health(engine: Engine, destination: str) -> DestinationStatus:
    handle = engine.client.get_workflow_handle_for(
        DestinationHealth.run, health_workflow_id(destination)
    )
    return await handle.query(DestinationHealth.status)


async def wait_health(
    engine: Engine,
    destination: str,
    check: Callable[[DestinationStatus], object],
    what: str,
    timeout: float = 60,
) -> DestinationStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    status = None
    while loop.time() < deadline:
        try:
            status = await health(engine, destination)
        except Exception:  # not started yet
            status = None
        if status is not None and check(status):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"{destination}: health never {what}: {status!r}")


def state_rows(engine: Engine, destination: str) -> list[str]:
    """The audit details of the destination's changes of state, in order."""
    return [
        (row.detail or "").rsplit(", attempt", 1)[0]
        for row in engine.store.audit_log().records(exchange=health_workflow_id(destination))
        if row.action == AuditAction.DESTINATION_STATE
    ]
