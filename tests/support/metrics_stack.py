"""A real `careweave gateway` and `careweave worker` with their metrics listeners, on a dev
server the caller started: what the metrics and dashboard tests scrape."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.fhir_server import free_port
from tests.support.processes import careweave_env, careweave_process


@dataclass(frozen=True)
class MetricsStack:
    mllp_port: int
    # host:port of each probe listener (its /metrics), and of each SDK metrics endpoint.
    gateway_probes: str
    worker_probes: str
    gateway_sdk: str
    worker_sdk: str


@contextlib.asynccontextmanager
async def gateway_and_worker(
    state: Path, temporal_address: str, **settings: str
) -> AsyncIterator[MetricsStack]:
    """Both processes with ``settings`` (Settings field names), probes and SDK metrics on
    free loopback ports, the gateway's MLLP port chosen by the system."""
    gateway_sdk_port, worker_sdk_port = free_port(), free_port()
    settings = {"mllp_port": "0", **settings}
    gateway_env = careweave_env(
        state,
        temporal_address,
        **settings,
        gateway_health_port="0",
        temporal_metrics_port=str(gateway_sdk_port),
    )
    worker_env = careweave_env(
        state,
        temporal_address,
        **settings,
        worker_health_port="0",
        temporal_metrics_port=str(worker_sdk_port),
    )
    async with (
        careweave_process("gateway", env=gateway_env) as gateway,
        careweave_process("worker", env=worker_env) as worker,
    ):
        mllp_port = int((await gateway.wait_for_line(r"MLLP gateway listening on \S+:(\d+)"))[1])
        yield MetricsStack(
            mllp_port=mllp_port,
            gateway_probes=(await gateway.wait_for_line(r"probes on http://(\S+)/readyz"))[1],
            worker_probes=(await worker.wait_for_line(r"probes on http://(\S+)/readyz"))[1],
            gateway_sdk=f"127.0.0.1:{gateway_sdk_port}",
            worker_sdk=f"127.0.0.1:{worker_sdk_port}",
        )
