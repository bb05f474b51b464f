"""Metrics an operator scrapes: a real `careweave gateway` and `careweave worker` on a real
Temporal dev server, messages sent over MLLP by a third-party client, then Careweave's
/metrics and the Temporal SDK's own endpoint read as Prometheus reads them."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.engine import mllp_send
from tests.support.fhir_server import free_port
from tests.support.processes import careweave_env, careweave_process, dev_server
from workers import sample_messages as sm

UNKNOWN_TYPE = (
    Path(__file__).resolve().parent.parent
    / "fixtures"
    / "corpus"
    / "adversarial"
    / "unknown-message-type.hl7"
)


def samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Sample values of the metric ``name``, keyed by their labels."""
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def value(found: dict[frozenset[tuple[str, str]], float], **labels: str) -> float:
    """The sum of the samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(amount for key, amount in found.items() if wanted <= key)


async def test_gateway_counts_what_it_answered_and_the_sdk_reports_its_own(
    tmp_path: Path, fhir_base_url: str
) -> None:
    gateway_sdk_port, worker_sdk_port = free_port(), free_port()
    order = sm.SampleOrder("MET-4001")
    with dev_server(tmp_path) as temporal:
        settings = {
            "task_queue": "careweave-metrics-test",
            "fhir_base_url": fhir_base_url,
            "mllp_port": "0",
        }
        gateway_env = careweave_env(
            tmp_path,
            temporal.address,
            **settings,
            gateway_health_port="0",
            temporal_metrics_port=str(gateway_sdk_port),
        )
        worker_env = careweave_env(
            tmp_path,
            temporal.address,
            **settings,
            worker_health_port="0",
            temporal_metrics_port=str(worker_sdk_port),
        )
        async with (
            careweave_process("gateway", env=gateway_env) as gateway,
            careweave_process("worker", env=worker_env) as worker,
            httpx.AsyncClient(timeout=30) as http,
        ):
            mllp_port = int(
                (await gateway.wait_for_line(r"MLLP gateway listening on \S+:(\d+)"))[1]
            )
            gateway_url = (await gateway.wait_for_line(r"probes on (http://\S+)/readyz"))[1]
            worker_url = (await worker.wait_for_line(r"probes on (http://\S+)/readyz"))[1]

            order_message = sm.lab_order(order, "MET-4001-O")
            acks = await mllp_send(
                mllp_port, [order_message, order_message, UNKNOWN_TYPE.read_bytes()]
            )
            assert ["MSA|AA" in ack for ack in acks] == [True, True, False]

            scraped = (await http.get(f"{gateway_url}/metrics")).text
            gateway_sdk = (await http.get(f"http://127.0.0.1:{gateway_sdk_port}/metrics")).text
            worker_metrics = await http.get(f"{worker_url}/metrics")
            worker_sdk = (await http.get(f"http://127.0.0.1:{worker_sdk_port}/metrics")).text

    received = samples(scraped, "careweave_messages_received_total")
    assert value(received, message_type="ORM^O01") == 2
    # MSH-9 ZZZ^Z01 is no exchange's: counted, but not as a label a sender chose.
    assert value(received, message_type="other") == 1
    assert "ZZZ" not in scraped

    acknowledged = samples(scraped, "careweave_messages_acknowledged_total")
    assert value(acknowledged, message_type="ORM^O01", ack_code="AA", outcome="accepted") == 1
    assert value(acknowledged, message_type="ORM^O01", ack_code="AA", outcome="duplicate") == 1
    refused = samples(scraped, "careweave_messages_refused_total")
    assert value(refused, message_type="other", ack_code="AR", outcome="rejected") == 1

    ack_seconds = samples(scraped, "careweave_ack_duration_seconds_count")
    assert value(ack_seconds, message_type="ORM^O01", ack_code="AA") == 2
    assert value(ack_seconds, ack_code="AR") == 1
    assert value(samples(scraped, "careweave_quarantine_held")) == 1

    # No patient data in any label or value text.
    for phi in (order.patient.mrn, order.patient.family, order.placer_order_number):
        assert phi not in scraped

    # The Temporal SDK's own: the gateway's client calls, the worker's pollers and slots.
    assert samples(gateway_sdk, "temporal_request_total")
    assert samples(worker_sdk, "temporal_worker_task_slots_available")
    assert worker_metrics.status_code == 200
