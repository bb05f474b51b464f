"""Commit = a Temporal signal-with-start on the exchange's workflow, durable before the ACK."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from exchanges.registry import REGISTRY
from exchanges.sdk import CommitError, ExchangeRegistry, Route, signal_name
from models.messages import InboundMessage
from models.settings import Settings
from workflows import search_attributes as sa

_RPC_TIMEOUT = timedelta(seconds=10)


class OpenRunsSnapshot:
    """The ids of an exchange's runs that were open when last looked at, refreshed when
    older than `max_age`.

    Runs under a legacy id are only ever started by older code, so a message needs a
    Temporal call for its legacy id only when the snapshot holds it: with no legacy run
    left, the ACK path pays nothing (one listing per `max_age`). The refresh covers a
    rolling upgrade, where an older gateway may still start legacy runs for a while.
    """

    def __init__(self, client: Client, max_age: timedelta) -> None:
        self._client = client
        self._max_age = max_age
        self._open: dict[str, set[str]] = {}
        self._taken_at: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def holds(self, exchange: str, workflow_id: str) -> bool:
        if self._stale(exchange):
            async with self._lock:
                if self._stale(exchange):
                    await self._take(exchange)
        return workflow_id in self._open[exchange]

    def _stale(self, exchange: str) -> bool:
        age = time.monotonic() - self._taken_at.get(exchange, -math.inf)
        return age > self._max_age.total_seconds()

    def closed(self, workflow_id: str) -> None:
        for ids in self._open.values():
            ids.discard(workflow_id)

    async def _take(self, exchange: str) -> None:
        query = f"Exchange = '{exchange}' AND ExecutionStatus = 'Running'"
        try:
            self._open[exchange] = {
                execution.id
                async for execution in self._client.list_workflows(query, rpc_timeout=_RPC_TIMEOUT)
            }
        except RPCError as err:
            raise CommitError(f"Temporal visibility: {err.status.name}") from err
        self._taken_at[exchange] = time.monotonic()


class ExchangeCommitter:
    """Starts or signals the exchange a route names, as its spec says."""

    def __init__(
        self, client: Client, settings: Settings, *, registry: ExchangeRegistry = REGISTRY
    ) -> None:
        self._client = client
        self._settings = settings
        self._registry = registry
        self._legacy_runs = OpenRunsSnapshot(
            client, timedelta(seconds=settings.legacy_workflow_ids_refresh_seconds)
        )

    async def commit(self, route: Route[Any], message: InboundMessage) -> str:
        """Returns the id of the workflow that now holds the message in its history."""
        legacy_id = route.legacy_workflow_id
        if (
            legacy_id
            and self._settings.legacy_lab_workflow_ids
            and await self._legacy_runs.holds(route.exchange, legacy_id)
        ):
            if await self._signal_if_running(legacy_id, route, message):
                return legacy_id
            self._legacy_runs.closed(legacy_id)
        spec = self._registry.exchange(route.exchange)
        keys = route.business_keys
        try:
            # Signal-with-start: starts the exchange if it is not running, signals it
            # otherwise; when this returns, the message is in Temporal's history.
            await self._client.start_workflow(
                spec.workflow.run,  # type: ignore[attr-defined]
                spec.start_input(route, self._settings),
                id=route.workflow_id,
                task_queue=self._settings.task_queue,
                start_signal=signal_name(route.signal),
                start_signal_args=[message],
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.EXCHANGE, spec.name),
                        SearchAttributePair(sa.FACILITY, route.facility),
                        SearchAttributePair(sa.MESSAGE_TYPE, message.message_type),
                        SearchAttributePair(sa.EXCHANGE_STATUS, "received"),
                        # Pseudonyms only (exchanges.sdk.search_pseudonym); a signal to a
                        # running exchange ignores these, the workflow adds new ones.
                        *(
                            SearchAttributePair(key, list(values))
                            for key, values in (
                                (sa.PATIENT_KEY, keys.patient),
                                (sa.ORDER_KEY, keys.order),
                                (sa.MESSAGE_KEY, keys.message),
                            )
                            if values
                        ),
                    ]
                ),
                static_summary=spec.summary.format(facility=route.facility),
                rpc_timeout=_RPC_TIMEOUT,
            )
        except RPCError as err:
            raise CommitError(f"Temporal refused or timed out: {err.status.name}") from err
        return route.workflow_id

    async def _signal_if_running(
        self, workflow_id: str, route: Route[Any], message: InboundMessage
    ) -> bool:
        """Signal the run under a legacy id if one is open; False when there is none (never
        started, or closed: the message then starts or reaches the pseudonymous id)."""
        try:
            await self._client.get_workflow_handle(workflow_id).signal(
                route.signal, message, rpc_timeout=_RPC_TIMEOUT
            )
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return False
            raise CommitError(f"Temporal refused or timed out: {err.status.name}") from err
        return True
