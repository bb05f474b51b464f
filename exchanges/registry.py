"""The one place exchanges are registered: add a line here and the gateway, committer,
worker, audit trail, search attributes and `careweave exchanges` all know the exchange."""

from __future__ import annotations

from exchanges import (
    destination_health,
    discharge_sync,
    imaging_order,
    order_to_result,
    ordered_delivery,
    patient_merge,
    patient_sync,
)
from exchanges.sdk import ExchangeRegistry

REGISTRY = ExchangeRegistry(
    exchanges=[
        order_to_result.EXCHANGE,
        imaging_order.EXCHANGE,
        discharge_sync.EXCHANGE,
        patient_sync.EXCHANGE,
        patient_merge.EXCHANGE,
    ],
    shared_steps=[ordered_delivery.STEP, destination_health.STEP],
)
