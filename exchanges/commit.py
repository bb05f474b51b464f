"""Commit = a Temporal signal-with-start on the exchange's workflow, durable before the ACK."""

from __future__ import annotations

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


class ExchangeCommitter:
    """Starts or signals the exchange a route names, as its spec says."""

    def __init__(
        self, client: Client, settings: Settings, *, registry: ExchangeRegistry = REGISTRY
    ) -> None:
        self._client = client
        self._settings = settings
        self._registry = registry

    async def commit(self, route: Route[Any], message: InboundMessage) -> str:
        """Returns the id of the workflow that now holds the message in its history."""
        if route.legacy_workflow_id and self._settings.legacy_lab_workflow_ids:
            if await self._signal_if_running(route.legacy_workflow_id, route, message):
                return route.legacy_workflow_id
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
