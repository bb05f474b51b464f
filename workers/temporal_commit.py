"""Commit = a Temporal signal-with-start on the exchange's workflow, durable before the ACK."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from models.exchanges import DischargeSyncInput, ExchangeTiming, OrderToResultInput
from models.messages import InboundMessage
from models.settings import Settings
from workers.intake import CommitError
from workers.routing import Route
from workflows import search_attributes as sa

LAB_MAPPING_VERSION = "v1"
ADT_MAPPING_VERSION = "v2"
SUMMARIES = {
    "order-to-result": "Lab order-to-result for an order of {facility}",
    "discharge-sync": "Discharge sync for an encounter at {facility}",
}


def order_to_result_timing(settings: Settings) -> ExchangeTiming:
    return ExchangeTiming(
        unknown_order_wait_seconds=settings.unknown_order_wait_seconds,
        correction_window_seconds=settings.correction_window_seconds,
        sla_seconds_by_priority={
            "stat": settings.sla_stat_seconds,
            "asap": settings.sla_asap_seconds,
            "routine": settings.sla_routine_seconds,
        },
    )


class TemporalCommitter:
    def __init__(self, client: Client, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._timing = order_to_result_timing(settings)

    def _start_input(self, route: Route) -> BaseModel:
        if route.exchange == "discharge-sync":
            return DischargeSyncInput(
                facility=route.facility,
                encounter_key=route.encounter_key,
                patient_key=route.patient_key,
                mapping_version=ADT_MAPPING_VERSION,
                close_after_seconds=self._settings.discharge_close_after_seconds,
            )
        return OrderToResultInput(
            facility=route.facility,
            placer_order_number=route.placer_order_number,
            placer_namespace=route.placer_namespace,
            mapping_version=LAB_MAPPING_VERSION,
            timing=self._timing,
        )

    async def commit(self, route: Route, message: InboundMessage) -> None:
        start_input = self._start_input(route)
        try:
            # Signal-with-start: starts the exchange if it is not running, signals it
            # otherwise; when this returns, the message is in Temporal's history.
            await self._client.start_workflow(
                route.workflow_type,
                start_input,
                id=route.workflow_id,
                task_queue=self._settings.task_queue,
                start_signal=route.signal,
                start_signal_args=[message],
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(sa.EXCHANGE, route.exchange),
                        SearchAttributePair(sa.FACILITY, route.facility),
                        SearchAttributePair(sa.MESSAGE_TYPE, message.message_type),
                        SearchAttributePair(sa.STATUS, "received"),
                    ]
                ),
                static_summary=SUMMARIES[route.exchange].format(facility=route.facility),
                rpc_timeout=timedelta(seconds=10),
            )
        except RPCError as err:
            raise CommitError(f"Temporal refused or timed out: {err.status.name}") from err
