"""Liveness and readiness probes of the gateway, the worker and the API, each a real
`careweave` process on a real Temporal dev server that the test stops and starts again:
readiness goes false while Temporal is away and true when it is back; liveness stays."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    DevServer,
    careweave_env,
    careweave_process,
    dev_server,
)

READY_WAIT_SECONDS = 120
PROBE_URL = r"probes on (http://\S+)/readyz"


async def wait_for_readiness(
    http: httpx.AsyncClient, base_url: str, ready: bool
) -> dict[str, object]:
    """Probe /readyz until it says ``ready`` (200) or not (503); the last answer's body."""
    expected = 200 if ready else 503
    status, body = 0, {}
    async with asyncio.timeout(READY_WAIT_SECONDS):
        while status != expected:
            with contextlib.suppress(httpx.TransportError):
                answer = await http.get(f"{base_url}/readyz")
                status, body = answer.status_code, answer.json()
            if status != expected:
                await asyncio.sleep(0.3)
    return body


@contextlib.asynccontextmanager
async def probed_processes(state_dir: Path, temporal: DevServer) -> AsyncIterator[dict[str, str]]:
    """The gateway, the worker and the API, each with its probes; name -> probe base URL."""
    env = careweave_env(
        state_dir,
        temporal.address,
        task_queue="careweave-health-test",
        mllp_port="0",
        api_port="0",
        gateway_health_port="0",
        worker_health_port="0",
    )
    async with (
        careweave_process("gateway", env=env) as gateway,
        careweave_process("worker", env=env) as worker,
        careweave_process("api", env=env) as api,
    ):
        yield {
            "gateway": (await gateway.wait_for_line(PROBE_URL))[1],
            "worker": (await worker.wait_for_line(PROBE_URL))[1],
            "api": (await api.wait_for_line(r"API listening on (http://\S+)"))[1],
        }


async def test_readiness_follows_temporal_and_liveness_does_not(tmp_path: Path) -> None:
    with dev_server(tmp_path) as temporal:
        async with probed_processes(tmp_path, temporal) as probes, httpx.AsyncClient() as http:
            for name, url in probes.items():
                body = await wait_for_readiness(http, url, ready=True)
                assert body["status"] == "ready", name
            assert set((await http.get(f"{probes['gateway']}/readyz")).json()["checks"]) == {
                "temporal",
                "database",
            }

            temporal.stop()
            for name, url in probes.items():
                body = await wait_for_readiness(http, url, ready=False)
                checks = body["checks"]
                assert isinstance(checks, dict)
                failing = {check for check, result in checks.items() if result != "ok"}
                assert failing == ({"polling"} if name == "worker" else {"temporal"}), body
                # Which dependency and what kind of failure, never where it is.
                assert str(temporal.port) not in str(body) and "127.0.0.1" not in str(body)
                # Alive all the same: a restart would not bring Temporal back.
                assert (await http.get(f"{url}/healthz")).status_code == 200

            temporal.start()
            for name, url in probes.items():
                body = await wait_for_readiness(http, url, ready=True)
                assert body["status"] == "ready", name


@pytest.mark.parametrize("setting", ["gateway_health_port", "worker_health_port"])
async def test_a_probe_port_in_use_stops_the_process_with_the_reason(
    tmp_path: Path, setting: str
) -> None:
    command = setting.split("_")[0]
    with dev_server(tmp_path) as temporal:
        async with careweave_process(
            "api", env=careweave_env(tmp_path, temporal.address, api_port="0")
        ) as api:
            taken = (await api.wait_for_line(r"API listening on http://\S+:(\d+)"))[1]
            env = careweave_env(tmp_path, temporal.address, mllp_port="0", **{setting: taken})
            async with careweave_process(command, env=env) as refused:
                await refused.wait_for_line(rf"health listener cannot listen on \S+:{taken}")
                assert await refused.process.wait() != 0
