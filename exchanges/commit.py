"""Commit = a Temporal signal-with-start on the exchange's workflow, durable before the ACK."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from exchanges.registry import REGISTRY
from exchanges.sdk import CommitError, ExchangeRegistry, Route, signal_name
from models.messages import InboundMessage
from models.settings import Settings
from workflows import search_attributes as sa


class ExchangeCommitter:
    """Starts or signals the exchange a route names, as its spec says."""

    def __init__(
        self, client: Client, settings: Settings, *, registry: ExchangeRegistry = REGISTRY
    ) -> None:
        self._client = client
        self._settings = settings
        self._registry = registry

    async def commit(self, route: Route[Any], message: InboundMessage) -> None:
        spec = self._registry.exchange(route.exchange)
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
                        SearchAttributePair(sa.STATUS, "received"),
                    ]
                ),
                static_summary=spec.summary.format(facility=route.facility),
                rpc_timeout=timedelta(seconds=10),
            )
        except RPCError as err:
            raise CommitError(f"Temporal refused or timed out: {err.status.name}") from err
