"""Liveness and readiness for load balancers and Kubernetes probes.

``GET /healthz`` answers 200 while the process's event loop does (liveness: restart me if
this stops). ``GET /readyz`` answers 200 only when every readiness check of the process
passes, else 503 naming the checks that failed (readiness: send me no work now). The
API serves both beside its routes; the gateway and the worker serve them on a small
listener of their own (CAREWEAVE_GATEWAY_HEALTH_PORT, CAREWEAVE_WORKER_HEALTH_PORT).

Answers name checks and exception types only: no host names, URLs or message data.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.engine import Engine
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.worker import Worker

# A probe waits this long for one dependency; kubelet's own default timeout is 1 s, so a
# probe configured with a few seconds gets an answer rather than a timeout.
CHECK_TIMEOUT = timedelta(seconds=2)
# Temporal lists a poller with the time of its last poll request; a worker long-polls for up
# to a minute, so one not seen for longer than this has stopped polling.
POLLER_SEEN_WITHIN_SECONDS = 90.0

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""None when the dependency is usable, else why not (safe to show to anyone)."""


def temporal_reachable(client: Client) -> ReadinessCheck:
    """Temporal's frontend answers its health check."""

    async def check() -> str | None:
        try:
            serving = await client.service_client.check_health(timeout=CHECK_TIMEOUT)
        except Exception as err:  # any failure to reach it means: not ready
            return f"unreachable ({type(err).__name__})"
        return None if serving else "not serving"

    return check


def database_reachable(engine: Engine) -> ReadinessCheck:
    """Careweave's database answers a trivial query."""

    def query() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    async def check() -> str | None:
        try:
            await asyncio.wait_for(asyncio.to_thread(query), CHECK_TIMEOUT.total_seconds())
        except Exception as err:
            return f"unreachable ({type(err).__name__})"
        return None

    return check


def worker_polling(worker: Worker) -> ReadinessCheck:
    """The worker runs and Temporal lists it among its task queue's workflow pollers, so
    work sent there reaches this process."""
    client = worker.client
    identity = worker.config().get("identity") or client.identity

    async def check() -> str | None:
        if not worker.is_running:
            return "not running"
        request = DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=worker.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        try:
            described = await client.workflow_service.describe_task_queue(
                request, timeout=CHECK_TIMEOUT
            )
        except Exception as err:
            return f"Temporal unreachable ({type(err).__name__})"
        now = time.time()
        for poller in described.pollers:
            last_poll = poller.last_access_time.ToSeconds()
            if poller.identity == identity and now - last_poll <= POLLER_SEEN_WITHIN_SECONDS:
                return None
        return "not polling its task queue"

    return check


def health_router(checks: Mapping[str, ReadinessCheck]) -> APIRouter:
    """``/healthz`` and ``/readyz`` for a process whose readiness is ``checks`` (run
    together on each probe, so one slow dependency does not add to another's wait)."""
    router = APIRouter()
    names = list(checks)

    @router.get("/healthz")
    async def alive() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/readyz")
    async def ready() -> JSONResponse:
        failures = await asyncio.gather(*(checks[name]() for name in names))
        results = {name: failure or "ok" for name, failure in zip(names, failures, strict=True)}
        is_ready = not any(failures)
        return JSONResponse(
            {"status": "ready" if is_ready else "not ready", "checks": results},
            status_code=200 if is_ready else 503,
            headers={"Cache-Control": "no-store"},
        )

    return router


@contextlib.asynccontextmanager
async def serving_health(
    checks: Mapping[str, ReadinessCheck],
    host: str,
    port: int,
    *,
    name: str,
    routers: Sequence[APIRouter] = (),
) -> AsyncIterator[int]:
    """Serve ``/healthz`` and ``/readyz`` (and ``routers``: the metrics) on host:port (0: a
    free one) until the block ends; yields the port. Raises OSError naming the address
    when it cannot listen."""
    # Imported here: the API package is heavy and only this function needs its server.
    from workers.api.server import serving_api

    app = FastAPI(title="Careweave health", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(health_router(checks))
    for router in routers:
        app.include_router(router)
    async with serving_api(app, host, port, name=f"the {name}'s health listener") as bound_port:
        yield bound_port
