"""Metrics an operator scrapes: a real `careweave gateway` and `careweave worker` on a real
Temporal dev server, messages sent over MLLP by a third-party client, then Careweave's
/metrics and the Temporal SDK's own endpoint read as Prometheus reads them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from exchanges.registry import REGISTRY
from models.review import ReviewReason
from tests.support.discharge import stay
from tests.support.engine import mllp_send
from tests.support.metrics_stack import gateway_and_worker
from tests.support.partner import Partner
from tests.support.processes import demo_routing, dev_server
from workers import sample_messages as sm
from workers.metrics import TEMPORAL_SDK_DASHBOARD_METRICS

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
    order = sm.SampleOrder("MET-4001")
    with dev_server(tmp_path) as temporal:
        async with (
            gateway_and_worker(
                tmp_path,
                temporal.address,
                task_queue="careweave-metrics-test",
                fhir_base_url=fhir_base_url,
            ) as stack,
            httpx.AsyncClient(timeout=30) as http,
        ):
            mllp_port = stack.mllp_port
            gateway_url, worker_url = (
                f"http://{stack.gateway_probes}",
                f"http://{stack.worker_probes}",
            )

            order_message = sm.lab_order(order, "MET-4001-O")
            acks = await mllp_send(
                mllp_port, [order_message, order_message, UNKNOWN_TYPE.read_bytes()]
            )
            assert ["MSA|AA" in ack for ack in acks] == [True, True, False]

            scraped = (await http.get(f"{gateway_url}/metrics")).text
            gateway_sdk = (await http.get(f"http://{stack.gateway_sdk}/metrics")).text
            worker_metrics = await http.get(f"{worker_url}/metrics")
            worker_sdk = (await http.get(f"http://{stack.worker_sdk}/metrics")).text

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
    # Series nothing has counted yet are there at 0, so rate() sees their first event.
    not_yet = {"message_type": "ORU^R01", "ack_code": "AE", "outcome": "not-committed"}
    assert [n for key, n in refused.items() if set(not_yet.items()) <= key] == [0]
    assert [n for key, n in received.items() if ("message_type", "unparsed") in key] == [0]

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


async def scrape_until(
    http: httpx.AsyncClient, url: str, ready: Callable[[str], bool], attempts: int = 120
) -> str:
    """The scrape of ``url`` once ``ready`` holds for it (the counts are refreshed in the
    background), else the last one, for the assertions to show."""
    text = ""
    for _ in range(attempts):
        text = (await http.get(url)).text
        if ready(text):
            break
        await asyncio.sleep(0.5)
    return text


def label_values(text: str, prefix: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(prefix) and label in sample.labels
    }


async def test_reviews_waiting_failing_deliveries_and_exchange_durations_are_counted(
    tmp_path: Path, fhir_base_url: str, partners: dict[str, Partner]
) -> None:
    """A lab result with an unmapped code waits for a reviewer; a discharge whose billing
    delivery the partner refuses (AR 100) holds its queue for a reviewer; the discharge
    exchange itself closes. The worker's /metrics counts both reviews by reason and the
    failing queue by destination; its SDK endpoint has the discharge's duration. A result
    whose order never came looks for it in FHIR: an activity (lab writes and deliveries are
    local activities first), so the SDK's activity series are served too."""
    order = sm.SampleOrder("MET-4002", local_code="ZZX9", text="Experimental")
    orphan = sm.SampleOrder("MET-4003", patient=sm.SamplePatient("MRN4003"))
    patient_stay = stay("V-4002", "MRN4002")
    billing = partners["billing"]
    routing = tmp_path / "destinations.toml"
    fhir_port = urlsplit(fhir_base_url).port
    assert fhir_port is not None
    routing.write_text(
        demo_routing(fhir_port, partners["primary-care"].mllp_port, billing.mllp_port)
    )
    await billing.aset_mode("AR", code="100", patient_id="MRN4002")
    with dev_server(tmp_path) as temporal:
        async with (
            gateway_and_worker(
                tmp_path,
                temporal.address,
                task_queue="careweave-ops-metrics-test",
                fhir_base_url=fhir_base_url,
                destinations_file=str(routing),
                discharge_close_after_seconds="1",
                visibility_metrics_seconds="0.5",
            ) as stack,
            httpx.AsyncClient(timeout=30) as http,
        ):
            mllp_port = stack.mllp_port
            worker_url = f"http://{stack.worker_probes}"
            acks = await mllp_send(
                mllp_port,
                [
                    sm.lab_order(order, "MET-4002-O"),
                    sm.lab_result(order, "MET-4002-R", [sm.UNMAPPED]),
                    sm.adt_event(patient_stay, "MET-4002-D", "A03"),
                    sm.lab_result(orphan, "MET-4003-R", [sm.POTASSIUM]),
                ],
            )
            assert all("MSA|AA" in ack for ack in acks), acks

            def counted(text: str) -> bool:
                pending = samples(text, "careweave_reviews_pending")
                queues = samples(text, "careweave_delivery_queues")
                return (
                    value(pending, reason="unmapped-code") == 1
                    and value(pending, reason="delivery-failed") == 1
                    and value(queues, destination="billing", alert="failing") == 1
                )

            def discharge_closed(text: str) -> bool:
                durations = samples(text, "careweave_exchange_duration_seconds_count")
                return value(durations, exchange="discharge-sync", outcome="completed") == 1

            scraped = await scrape_until(http, f"{worker_url}/metrics", counted)
            sdk = await scrape_until(http, f"http://{stack.worker_sdk}/metrics", discharge_closed)
    await billing.areset()

    pending = samples(scraped, "careweave_reviews_pending")
    assert value(pending, reason="unmapped-code") == 1
    assert value(pending, reason="delivery-failed") == 1
    assert value(pending) == 2  # no other reason, nothing "unrecorded"
    assert label_values(scraped, "careweave_reviews_", "reason") == {
        *(reason.value for reason in ReviewReason),
        "unrecorded",
    }
    oldest = samples(scraped, "careweave_reviews_oldest_pending_age_seconds")
    assert value(oldest, reason="unmapped-code") > 0
    assert value(oldest, reason="delivery-failed") > 0
    assert value(oldest, reason="uncertain-merge") == 0

    queues = samples(scraped, "careweave_delivery_queues")
    assert value(queues, destination="billing", alert="failing") == 1
    assert value(queues, destination="billing", alert="held") == 0
    assert value(queues, destination="primary-care", alert="failing") == 0
    assert value(queues, destination="fhir-platform", alert="failing") == 0
    assert label_values(scraped, "careweave_delivery_", "destination") == {
        "fhir-platform",
        "primary-care",
        "billing",
    }
    assert value(samples(scraped, "careweave_visibility_refresh_age_seconds")) >= 0

    durations = samples(sdk, "careweave_exchange_duration_seconds_count")
    assert value(durations, exchange="discharge-sync", outcome="completed") == 1
    # Still running: the order waits for its reviewer, the billing queue too.
    assert value(durations, exchange="order-to-result") == 0
    exchange_names = {part.name for part in (*REGISTRY.exchanges, *REGISTRY.shared_steps)}
    assert label_values(sdk, "careweave_exchange_", "exchange") <= exchange_names
    # The Temporal SDK metrics the dashboard plots are served under those names.
    # As Prometheus stores them: the exposition's own names (the Python parser would add
    # _total to the SDK's counters, which the SDK does not).
    sdk_names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", sdk, re.MULTILINE))
    for name in TEMPORAL_SDK_DASHBOARD_METRICS:
        assert name in sdk_names or f"{name}_bucket" in sdk_names, name

    # No patient data anywhere: identifiers, names, visit and order numbers, control ids.
    for phi in (
        "MRN4002",
        "MRN4003",
        "V-4002",
        "MET-4002",
        "MET-4003",
        order.patient.family,
        order.patient.given,
        patient_stay.patient.family,
    ):
        assert phi not in scraped
        assert phi not in sdk
