"""The dashboard's queries and the alert rules on a real Prometheus scraping a real Careweave.

A real dev server, `careweave gateway` and `careweave worker` (each with its /metrics and
the Temporal SDK's endpoint), a billing partner refusing one patient's discharge, and
Debian's Prometheus scraping all four endpoints every second with docs/prometheus-alerts.yml
loaded as its rule file. Messages go in two bursts a few scrapes apart, so counters and
histograms move between scrapes and rates are not zero. Then every panel target of
docs/grafana-dashboard.json and every alert rule is sent to /api/v1/query.

Grafana is not run (it is not packaged for Debian bookworm nor on PyPI/npm): its variables
are replaced as Grafana would expand them for a Prometheus scraped every 15 s (see
GRAFANA_VARIABLES); the dashboard's queries are otherwise sent unchanged.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.support.dashboard import (
    ALERT_RULES,
    METRIC_NAME,
    OPERATIONS,
    alert_names,
    dashboard_exprs,
)
from tests.support.discharge import stay
from tests.support.engine import mllp_send
from tests.support.metrics_stack import gateway_and_worker
from tests.support.partner import Partner
from tests.support.processes import demo_routing, dev_server
from tests.support.prometheus import (
    PrometheusServer,
    instant_query,
    prometheus_binary,
    running_prometheus,
)
from workers import sample_messages as sm

UNKNOWN_TYPE = (
    Path(__file__).resolve().parent.parent
    / "fixtures"
    / "corpus"
    / "adversarial"
    / "unknown-message-type.hl7"
)
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval): 1m
# for the usual 15 s scrape. $__range is the dashboard's time range; 5m covers this whole
# run (the test scrapes every second, so both windows hold every sample it made).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
# What the run below makes happen, so these alerts must be pending or firing at its end:
# two refused frames in quarantine, refusals in the last 10 minutes, the billing queue of
# the refused discharge failing at its head.
EXPECTED_ALERTS = {
    "CareweaveQuarantineHeld",
    "CareweaveMessagesRefused",
    "CareweaveDestinationFailing",
}
# Already after the first burst, with one refusal only.
FIRST_REFUSAL_ALERTS = {"CareweaveQuarantineHeld", "CareweaveMessagesRefused"}
# And these must not be: the worker refreshes its counts every half second; nothing waits
# for an hour, no destination is down.
QUIET_ALERTS = {
    "CareweaveCountsStale",
    "CareweaveReviewWaitingLong",
    "CareweaveIdentityReviewWaiting",
    "CareweaveDestinationDown",
}
WAIT_SECONDS = 60


def as_grafana_expands(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a dashboard variable the test does not expand: {expr}"
    return expr


def values(answer: dict[str, Any]) -> list[float]:
    """The sample values of an instant query's vector answer."""
    assert answer["data"]["resultType"] == "vector", answer
    return [float(sample["value"][1]) for sample in answer["data"]["result"]]


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await check():
        assert time.monotonic() < deadline, f"not within {WAIT_SECONDS}s: {what}"
        await asyncio.sleep(0.5)


def test_promtool_accepts_the_alert_rules() -> None:
    checked = subprocess.run(
        [prometheus_binary("promtool"), "check", "rules", str(ALERT_RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in checked.stdout, checked.stdout


def test_the_runbook_says_what_to_do_for_every_alert() -> None:
    runbook = OPERATIONS.read_text()
    assert "docs/prometheus-alerts.yml" in runbook
    for name in alert_names():
        assert f"`{name}`" in runbook, name


async def test_every_dashboard_query_and_alert_rule_runs_on_prometheus(
    tmp_path: Path, fhir_base_url: str, partners: dict[str, Partner]
) -> None:
    billing = partners["billing"]
    routing = tmp_path / "destinations.toml"
    fhir_port = urlsplit(fhir_base_url).port
    assert fhir_port is not None
    routing.write_text(
        demo_routing(fhir_port, partners["primary-care"].mllp_port, billing.mllp_port)
    )
    await billing.aset_mode("AR", code="100", patient_id="MRN5102")
    unmapped = sm.SampleOrder(
        "PROM-5101", local_code="ZZX9", text="Experimental", patient=sm.SamplePatient("MRN5101")
    )
    routine = sm.SampleOrder("PROM-5103", patient=sm.SamplePatient("MRN5103"))
    # Results whose orders never come, one per burst: each exchange looks for its order in
    # FHIR, an activity (writes and deliveries are local activities first), so the activity
    # panels have a rate to show.
    orphans = [
        sm.SampleOrder(f"PROM-510{n}", patient=sm.SamplePatient(f"MRN510{n}")) for n in (5, 6)
    ]
    with dev_server(tmp_path) as temporal:
        async with (
            gateway_and_worker(
                tmp_path,
                temporal.address,
                task_queue="careweave-prometheus-test",
                fhir_base_url=fhir_base_url,
                destinations_file=str(routing),
                discharge_close_after_seconds="1",
                visibility_metrics_seconds="0.5",
            ) as stack,
            httpx.AsyncClient(timeout=30) as http,
        ):
            mllp_port = stack.mllp_port
            jobs = {
                "careweave-gateway": [stack.gateway_probes],
                "careweave-worker": [stack.worker_probes],
                "temporal-sdk": [stack.gateway_sdk, stack.worker_sdk],
            }
            with running_prometheus(jobs, rule_files=[ALERT_RULES]) as prometheus:

                async def query(expr: str) -> dict[str, Any]:
                    answer: dict[str, Any] = await instant_query(http, prometheus, expr)
                    return answer

                async def present(expr: str) -> bool:
                    return bool(values(await query(expr)))

                # First burst: an order and its result with an unmapped code (a review), a
                # discharge whose billing delivery is refused (a review, a failing queue), a
                # frame of a type no exchange takes (AR, quarantined), a result without
                # its order.
                first = await mllp_send(
                    mllp_port,
                    [
                        sm.lab_order(unmapped, "PROM-5101-O"),
                        sm.lab_result(unmapped, "PROM-5101-R", [sm.UNMAPPED]),
                        sm.adt_event(stay("V-5102", "MRN5102"), "PROM-5102-D", "A03"),
                        UNKNOWN_TYPE.read_bytes(),
                        sm.lab_result(orphans[0], "PROM-5105-R", [sm.POTASSIUM]),
                    ],
                )
                assert ["MSA|AA" in ack for ack in first] == [True, True, True, False, True], first
                await until(
                    lambda: present(
                        'careweave_exchange_duration_seconds_count{exchange="discharge-sync"}'
                    ),
                    "the first discharge's duration scraped",
                )
                # One refusal since the gateway started is an alert too, although its
                # counter was born at 1 (so its rate over the window is still 0).
                await until(
                    lambda: alerts_active(http, prometheus, FIRST_REFUSAL_ALERTS),
                    f"alerts {sorted(FIRST_REFUSAL_ALERTS)} on the first refusal",
                )
                # Second burst, after Prometheus has the first: the same counters and
                # histograms move, so their rates and quantiles have something to show.
                second = await mllp_send(
                    mllp_port,
                    [
                        sm.lab_order(routine, "PROM-5103-O"),
                        sm.adt_event(stay("V-5104", "MRN5104"), "PROM-5104-D", "A03"),
                        UNKNOWN_TYPE.read_bytes(),
                        sm.lab_result(orphans[1], "PROM-5106-R", [sm.POTASSIUM]),
                    ],
                )
                assert ["MSA|AA" in ack for ack in second] == [True, True, False, True], second
                await until(
                    lambda: present(
                        "increase(careweave_exchange_duration_seconds_count"
                        '{exchange="discharge-sync",outcome="completed"}[1m]) > 0'
                    ),
                    "the second discharge closed and scraped",
                )
                await until(
                    lambda: present(
                        'careweave_delivery_queues{destination="billing",alert="failing"} == 1'
                    ),
                    "the billing queue counted as failing",
                )
                await until(
                    lambda: alerts_active(http, prometheus, EXPECTED_ALERTS),
                    f"alerts {sorted(EXPECTED_ALERTS)} pending or firing",
                )

                # All four endpoints scraped without error (the SDK's in the format it serves).
                assert values(await query("up")) == [1.0] * 4
                label_values = f"{prometheus.url}/api/v1/label/__name__/values"
                names = set((await http.get(label_values)).json()["data"])
                panels = await check_dashboard(query, names)
                rules = await check_alert_rules(http, prometheus, query, names)
                active = await active_alerts(http, prometheus)
                # Nothing at warn or above: no rule evaluation or ingestion errors.
                assert not prometheus.log.read_text().strip(), prometheus.log_tail()
    await billing.areset()

    assert EXPECTED_ALERTS <= active, active
    assert not active & QUIET_ALERTS, active
    assert panels >= 15 and rules == len(alert_names())


async def check_dashboard(
    query: Callable[[str], Awaitable[dict[str, Any]]], names: set[str]
) -> int:
    """Every target accepted, naming only series Prometheus has, answering a number (not
    only NaN): the run moves every series the dashboard plots between two scrapes."""
    exprs = dashboard_exprs()
    for title, expr in exprs:
        missing = set(METRIC_NAME.findall(expr)) - names
        assert not missing, f"{title}: {sorted(missing)} not scraped ({expr})"
        answer = await query(as_grafana_expands(expr))
        assert answer["status"] == "success", f"{title}: {answer}"
        found = values(answer)
        assert found, f"{title}: no series for {expr}"
        assert any(math.isfinite(value) for value in found), f"{title}: {expr} -> {found}"
    return len(exprs)


async def check_alert_rules(
    http: httpx.AsyncClient,
    prometheus: PrometheusServer,
    query: Callable[[str], Awaitable[dict[str, Any]]],
    names: set[str],
) -> int:
    """Every rule of the file loaded, evaluated without error and accepted by the query API,
    naming only series Prometheus has."""
    groups = (await http.get(f"{prometheus.url}/api/v1/rules")).json()["data"]["groups"]
    assert {group["file"] for group in groups} == {str(ALERT_RULES)}
    rules = [rule for group in groups for rule in group["rules"]]
    assert sorted(rule["name"] for rule in rules) == sorted(alert_names())
    for rule in rules:
        assert rule["type"] == "alerting", rule
        assert rule["health"] == "ok" and not rule.get("lastError"), rule
        expr = rule["query"]
        # absent(x) names x exactly so that it answers when x is missing.
        missing = set(METRIC_NAME.findall(re.sub(r"absent\([^)]*\)", "", expr))) - names
        assert not missing, f"{rule['name']}: {sorted(missing)} not scraped ({expr})"
        answer = await query(expr)
        assert answer["status"] == "success", f"{rule['name']}: {answer}"
    return len(rules)


async def active_alerts(http: httpx.AsyncClient, prometheus: PrometheusServer) -> set[str]:
    alerts = (await http.get(f"{prometheus.url}/api/v1/alerts")).json()["data"]["alerts"]
    return {
        alert["labels"]["alertname"] for alert in alerts if alert["state"] in ("pending", "firing")
    }


async def alerts_active(
    http: httpx.AsyncClient, prometheus: PrometheusServer, wanted: set[str]
) -> bool:
    return wanted <= await active_alerts(http, prometheus)
