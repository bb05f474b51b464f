"""docs/grafana-dashboard.json plots only series Careweave exports.

Careweave's own names are read from what its instruments really export: the gateway's and
the visibility gauges' instruments on a meter provider with OpenTelemetry's Prometheus
reader (one value each), and the exchange-duration histogram from the Temporal SDK's
Prometheus endpoint. The SDK's own worker metrics are the ones workers/metrics.py lists
(tests/integration/test_metrics.py checks a real worker serves each of them).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from adapters.database import CareweaveStore
from adapters.payload_crypto import new_key_line, parse_key_ring
from tests.support.dashboard import DASHBOARD, METRIC_NAME, dashboard_exprs
from tests.support.fhir_server import free_port
from workers.exchange_duration_interceptor import EXCHANGE_DURATION_METRIC
from workers.intake import IntakeResult, Outcome
from workers.metrics import TEMPORAL_SDK_DASHBOARD_METRICS, GatewayMetrics
from workers.visibility_metrics import VisibilityGauges, VisibilitySnapshot


def exported(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


@pytest.fixture
def careweave_series(tmp_path: Path) -> Iterator[set[str]]:
    """Sample names the gateway's and the worker's /metrics serve, each instrument used."""
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        keys = parse_key_ring(new_key_line("k1"), source="test")
        store = CareweaveStore.from_url(f"sqlite:///{tmp_path / 'careweave.db'}", keys)
        gateway = GatewayMetrics(store, meter=provider.get_meter("test.gateway"))
        for ack_code, outcome in (("AA", Outcome.ACCEPTED), ("AR", Outcome.REJECTED)):
            result = IntakeResult(outcome, ack_code, None, message_type="ORU^R01")
            gateway.answered(result, 0.01)
        # The counts are Temporal's in production (integration test); here a snapshot.
        gauges = VisibilityGauges(cast(Client, None), ["billing"], meter=provider.get_meter("t"))
        gauges.snapshot = VisibilitySnapshot(
            reviews_pending={"unmapped-code": 1},
            oldest_review_seconds={"unmapped-code": 60.0},
            alerting_queues={("billing", "failing"): 1},
            held_events={"billing": 2},
            destination_state={"billing": "down"},
            refreshed_at=0.0,
        )
        yield exported(generate_latest(REGISTRY).decode())
    finally:
        provider.shutdown()  # the reader leaves the global registry


def sdk_series() -> set[str]:
    """Sample names of the exchange-duration histogram as the Temporal SDK serves it."""
    port = free_port()
    runtime = Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"127.0.0.1:{port}"))
    )
    histogram = runtime.metric_meter.create_histogram_float(EXCHANGE_DURATION_METRIC, "", "s")
    histogram.record(1.0, {"exchange": "discharge-sync", "outcome": "completed"})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return exported(answer.read().decode())


def test_every_panel_queries_only_series_careweave_exports(careweave_series: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = careweave_series | sdk_series()
    for name in TEMPORAL_SDK_DASHBOARD_METRICS:
        known |= {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 15
    for title, expr in exprs:
        names = METRIC_NAME.findall(expr)
        assert names, f"{title}: {expr} plots no Careweave or Temporal metric"
        unknown = sorted(set(names) - known)
        assert not unknown, f"{title}: {unknown} are not exported"


def test_the_dashboard_plots_every_metric_ops_need() -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    plotted = {name for _, expr in exprs for name in METRIC_NAME.findall(expr)}
    for needed in (
        "careweave_messages_acknowledged_total",
        "careweave_messages_refused_total",
        "careweave_ack_duration_seconds_bucket",
        "careweave_quarantine_held",
        "careweave_reviews_pending",
        "careweave_reviews_oldest_pending_age_seconds",
        "careweave_delivery_queues",
        "careweave_destination_held_events",
        "careweave_exchange_duration_seconds_bucket",
        *TEMPORAL_SDK_DASHBOARD_METRICS,
    ):
        assert any(name == needed or name == f"{needed}_bucket" for name in plotted), needed
