"""Ordered delivery, the shared step: its worker side (the queue workflow, its activities).

Exchanges do not route messages to it; they enqueue events through its
``enqueue_delivery`` activity, one queue per destination and patient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from activities.ordered_delivery import DeliveryActivities
from exchanges.destination_health import health_policy
from exchanges.sdk import StepSpec, WorkerDependencies
from models.audit import AuditAction
from workflows import search_attributes as sa
from workflows.ordered_delivery import OrderedDelivery


def activities(dependencies: WorkerDependencies) -> Sequence[Callable[..., Any]]:
    settings = dependencies.settings
    delivery = DeliveryActivities(
        dependencies.client,
        dependencies.routing,
        task_queue=settings.task_queue,
        idle_close_seconds=settings.delivery_idle_close_seconds,
        health_policy=health_policy(settings),
    )
    dependencies.on_close.push_async_callback(delivery.aclose)
    return [
        delivery.routing_for,
        delivery.enqueue_delivery,
        delivery.hand_over_or_enqueue,
        delivery.forward_deliveries,
        delivery.destination_clear,
        delivery.deliver_to_fhir,
        delivery.deliver_to_mllp,
    ]


STEP = StepSpec(
    name="ordered-delivery",
    workflows=(OrderedDelivery,),
    activities=activities,
    audit_actions={
        DeliveryActivities.routing_for: AuditAction.ACCESS,
        DeliveryActivities.enqueue_delivery: AuditAction.ACCESS,
        DeliveryActivities.hand_over_or_enqueue: AuditAction.ACCESS,
        DeliveryActivities.forward_deliveries: AuditAction.ACCESS,
        DeliveryActivities.destination_clear: AuditAction.ACCESS,
        DeliveryActivities.deliver_to_fhir: AuditAction.PUSH,
        DeliveryActivities.deliver_to_mllp: AuditAction.PUSH,
    },
    search_attributes=(sa.EXCHANGE, sa.DESTINATION, sa.DELIVERY_ALERT, sa.REVIEW_STATE),
)
