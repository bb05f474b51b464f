"""Destination health, a shared step beside ordered delivery: its worker side (one health
workflow per destination, the probe and the audit row of each change of state)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from activities.destination_health import HealthActivities
from exchanges.sdk import StepSpec, WorkerDependencies
from models.audit import AuditAction
from models.destination_health import HealthPolicy
from models.settings import Settings
from workflows import search_attributes as sa
from workflows.destination_health import DestinationHealth


def health_policy(settings: Settings) -> HealthPolicy:
    return HealthPolicy(
        failures_to_trip=settings.destination_failures_to_trip,
        first_probe_seconds=settings.destination_first_probe_seconds,
        max_probe_seconds=settings.destination_max_probe_seconds,
        probe_timeout_seconds=settings.destination_probe_timeout_seconds,
        replay_parallel_patients=settings.replay_parallel_patients,
        replay_events_per_second=settings.replay_events_per_second,
    )


def activities(dependencies: WorkerDependencies) -> Sequence[Callable[..., Any]]:
    health = HealthActivities(dependencies.client, dependencies.routing)
    dependencies.on_close.push_async_callback(health.aclose)
    return [health.probe_destination, health.record_destination_state]


STEP = StepSpec(
    name="destination-health",
    workflows=(DestinationHealth,),
    activities=activities,
    audit_actions={
        # A probe reads nothing clinical; it is contact with the destination.
        HealthActivities.probe_destination: AuditAction.ACCESS,
        HealthActivities.record_destination_state: AuditAction.DESTINATION_STATE,
    },
    search_attributes=(
        sa.EXCHANGE,
        sa.DESTINATION,
        sa.DELIVERY_ALERT,
        sa.HELD_EVENTS,
        sa.OLDEST_HELD_AT,
    ),
)
