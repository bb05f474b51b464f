"""Metrics for operations through OpenTelemetry, scraped by Prometheus.

Careweave's own instruments (messages received, acknowledged and refused, the time to an
ACK, the quarantine waiting for an operator) are exported by OpenTelemetry's Prometheus
reader and served at ``/metrics`` beside the probes (workers/health.py). The Temporal
SDK's own client and worker metrics (task slots, poll and task latencies, RPC failures)
come from its Rust core, which serves them on a port of its own
(CAREWEAVE_TEMPORAL_METRICS_PORT).

Labels are message types the registry accepts, ACK codes and outcomes: never a value
from a message (a sender's MSH-9 that no exchange accepts is counted as ``other``, so a
sender cannot mint label values either).

What waits for a person or a destination (reviews by reason and age, delivery queues held
or failing by destination) is counted from Temporal visibility by the worker
(workers/visibility_metrics.py); exchange durations are recorded by the workflows' own
metric meter (workers/exchange_duration_interceptor.py) and served with the SDK's metrics.
docs/grafana-dashboard.json plots them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from fastapi import APIRouter
from fastapi.responses import Response
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from adapters.database import CareweaveStore
from exchanges.registry import REGISTRY
from exchanges.sdk import ExchangeRegistry
from models.records import QuarantineStatus
from models.settings import Settings
from workers.exchange_duration_interceptor import (
    EXCHANGE_DURATION_BUCKETS,
    EXCHANGE_DURATION_METRIC,
)
from workers.intake import IntakeResult, Outcome

# Seconds from the gateway taking a whole frame to its ACK written: commit-then-ACK is one durable
# Temporal call (milliseconds on loopback, more under load), so buckets span 1 ms to 30 s.
ACK_SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

# The Temporal SDK's own metrics that docs/grafana-dashboard.json plots (the SDK names them;
# its durations are in milliseconds): free task slots per worker type, how long tasks wait
# for a worker, how long a workflow task runs, the sticky cache and the calls to Temporal.
TEMPORAL_SDK_DASHBOARD_METRICS = (
    "temporal_worker_task_slots_available",
    "temporal_workflow_task_schedule_to_start_latency",
    "temporal_activity_schedule_to_start_latency",
    "temporal_workflow_task_execution_latency",
    "temporal_sticky_cache_size",
    "temporal_request",
)

_configured = False


def configure_metrics(settings: Settings, service_name: str) -> bool:
    """Install the meter provider once per process (CAREWEAVE_METRICS_EXPORTER); True when
    ``/metrics`` has something to serve."""
    global _configured
    if settings.metrics_exporter == "none":
        return False
    if not _configured:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

        provider = MeterProvider(
            resource=Resource.create({"service.name": service_name}),
            metric_readers=[PrometheusMetricReader()],
            views=[
                View(
                    instrument_name="careweave.ack.duration",
                    aggregation=ExplicitBucketHistogramAggregation(ACK_SECONDS_BUCKETS),
                )
            ],
        )
        metrics.set_meter_provider(provider)
        _configured = True
    return True


def configure_temporal_metrics(settings: Settings) -> None:
    """The Temporal SDK's metrics on CAREWEAVE_TEMPORAL_METRICS_PORT, when set. Call before
    the process's first Temporal client: the SDK's runtime is made with its first client."""
    if settings.temporal_metrics_port is None:
        return
    address = f"{settings.health_host}:{settings.temporal_metrics_port}"
    prometheus = PrometheusConfig(
        bind_address=address,
        histogram_bucket_overrides={EXCHANGE_DURATION_METRIC: EXCHANGE_DURATION_BUCKETS},
    )
    Runtime.set_default(
        Runtime(telemetry=TelemetryConfig(metrics=prometheus)), error_if_already_set=True
    )


def metrics_router() -> APIRouter:
    """``GET /metrics`` in Prometheus's text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client import REGISTRY as PROMETHEUS

    router = APIRouter()

    @router.get("/metrics")
    async def scrape() -> Response:
        # Observable instruments (the quarantine count) query the database while collected.
        text = await asyncio.to_thread(generate_latest, PROMETHEUS)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return router


class GatewayMetrics:
    """What the MLLP gateway answered, and how fast; the quarantine it leaves to operators."""

    def __init__(
        self,
        store: CareweaveStore,
        registry: ExchangeRegistry = REGISTRY,
        *,
        meter: Meter | None = None,
    ) -> None:
        self._accepted_types = frozenset(registry.required_segments)
        meter = meter or metrics.get_meter("careweave.gateway")
        self._received = meter.create_counter(
            "careweave.messages.received",
            unit="{message}",
            description="Messages (and refused frames) the gateway read, by message type",
        )
        self._acknowledged = meter.create_counter(
            "careweave.messages.acknowledged",
            unit="{message}",
            description="Messages answered AA (committed, or a duplicate of one that was)",
        )
        self._refused = meter.create_counter(
            "careweave.messages.refused",
            unit="{message}",
            description="Messages and frames answered AE or AR, by ACK code; kept in quarantine",
        )
        self._ack_duration = meter.create_histogram(
            "careweave.ack.duration",
            unit="s",
            description="From the gateway taking a whole frame to its ACK written",
        )

        self._start_at_zero()

        def held(_options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(store.quarantine_count(QuarantineStatus.HELD.value))

        meter.create_observable_gauge(
            "careweave.quarantine.held",
            callbacks=[held],
            unit="{message}",
            description="Quarantined messages waiting for an operator (release or discard)",
        )

    def _start_at_zero(self) -> None:
        """Every series the gateway can count, exported at 0 from its start: a series born
        at 1 has no increase for ``rate()`` to see, so the first refusal of a kind after a
        restart would neither show on the dashboard nor fire an alert. The labels are
        bounded (message types the registry accepts, ``other``, ``unparsed``)."""
        for message_type in (*sorted(self._accepted_types), "other", "unparsed"):
            self._received.add(0, {"message_type": message_type})
            for outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
                labels = {"message_type": message_type, "ack_code": "AA"}
                self._acknowledged.add(0, {**labels, "outcome": outcome.value})
            for ack_code in ("AE", "AR"):
                for outcome in (Outcome.REJECTED, Outcome.NOT_COMMITTED):
                    labels = {"message_type": message_type, "ack_code": ack_code}
                    self._refused.add(0, {**labels, "outcome": outcome.value})

    def message_type_label(self, message_type: str) -> str:
        if not message_type:
            return "unparsed"
        return message_type if message_type in self._accepted_types else "other"

    def answered(self, result: IntakeResult, seconds: float) -> None:
        message_type = self.message_type_label(result.message_type)
        self._received.add(1, {"message_type": message_type})
        labels = {"message_type": message_type, "ack_code": result.ack_code}
        # accepted/duplicate for AA; rejected (the message) or not-committed (Temporal) else.
        counted = {**labels, "outcome": result.outcome.value}
        if result.ack_code == "AA":
            self._acknowledged.add(1, counted)
        else:
            self._refused.add(1, counted)
        self._ack_duration.record(seconds, labels)
