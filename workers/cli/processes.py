"""The long-running processes: the embedded stack (`up`, `demo`) and its parts run alone
(`worker`, `gateway`, `api`), each stopped in order by Ctrl-C or a service manager's SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from exchanges.commit import ExchangeCommitter
from models.errors import ConfigurationError
from models.settings import load_settings
from workers.cli.common import (
    configure_logging,
    connect_temporal,
    console,
    fail,
    open_audit_log,
    open_store,
    stop_requested,
)
from workers.intake import MessageIntake

if TYPE_CHECKING:
    from fastapi import APIRouter
    from temporalio.client import Client

    from models.destinations import RoutingConfig
    from models.settings import Settings
    from workers.health import ReadinessCheck
    from workers.stack import RunningStack

app = typer.Typer()

Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


@app.command()
def up(verbose: Verbose = False) -> None:
    """Start the embedded stack on loopback and run until Ctrl-C."""
    from workers.stack import StackError, embedded_stack

    configure_logging(verbose)
    settings = load_settings()

    async def run() -> None:
        stop = stop_requested()
        async with embedded_stack(settings) as stack:
            _print_stack(stack)
            console.print("Press Ctrl-C to stop.")
            await stop.wait()
            console.print(
                "Stopping the gateway, the worker, the API, the FHIR server and Temporal..."
            )
        console.print("Stopped: every part of the stack has been shut down.")

    try:
        asyncio.run(run())
    except StackError as err:
        raise fail(str(err)) from err


@app.command()
def worker(verbose: Verbose = False) -> None:
    """Run only the Temporal worker (production: as many as load needs)."""
    from models.destinations import RoutingConfigError, load_routing
    from workers.health import worker_polling
    from workers.metrics import configure_metrics, configure_temporal_metrics, metrics_router
    from workers.telemetry import configure_tracing
    from workers.worker import lab_fhir_client, open_worker

    configure_logging(verbose)
    settings = load_settings()
    configure_tracing(settings, "careweave-worker")
    configure_temporal_metrics(settings)
    routers = [metrics_router()] if configure_metrics(settings, "careweave-worker") else []
    try:
        routing = load_routing(settings.destinations_file)
    except RoutingConfigError as err:
        raise fail(str(err)) from err
    console.print(f"routing {settings.destinations_file}: {routing.label}")
    open_store(settings, verify_keys=True)

    async def run() -> None:
        client = await connect_temporal(settings)
        async with lab_fhir_client(settings) as fhir, contextlib.AsyncExitStack() as scope:
            worker = await scope.enter_async_context(
                open_worker(client, settings, fhir, routing=routing)
            )
            if settings.worker_health_port is not None:
                # Listening before the worker runs: a port that cannot be bound stops the
                # process before it takes work, and the probe says "not running" until then.
                await _serve_health(
                    scope,
                    "worker",
                    settings.health_host,
                    settings.worker_health_port,
                    {"polling": worker_polling(worker)},
                    routers,
                )
                if routers and settings.visibility_metrics_seconds > 0:
                    _count_from_visibility(scope, client, settings, routing)
            # The worker stops gracefully first, and only then does the scope close its
            # destination connections.
            stop = stop_requested()
            running = asyncio.create_task(worker.run())
            if settings.orthanc_url is not None:
                await _follow_pacs(client, settings)
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not running.done():
                await worker.shutdown()
            await running  # a worker that failed by itself reports its error here
        console.print("Stopped: the worker and its destination connections are shut down.")

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except ConfigurationError as err:
        # Credentials or TLS files of the lab FHIR server or of a destination.
        raise fail(str(err)) from err


async def _follow_pacs(client: Client, settings: Settings) -> None:
    """Every worker makes sure the PACS change-feed poller runs: whichever starts first
    starts it, the others find it (one poller per namespace, whatever the number of
    workers), and a worker started after the poller ended starts it again. Only for a PACS
    at orthanc_url: an embedded Orthanc is `careweave up`'s child, which starts the poller."""
    from exchanges.imaging_order import start_pacs_poller

    await start_pacs_poller(client, settings)
    console.print("following the PACS change feed (one poller for every worker)")


def _count_from_visibility(
    scope: contextlib.AsyncExitStack,
    client: Client,
    settings: Settings,
    routing: RoutingConfig,
) -> None:
    """Reviews pending and deliveries held, read from Temporal periodically while ``scope``
    lasts (workers/visibility_metrics.py)."""
    from workers.visibility_metrics import VisibilityGauges

    gauges = VisibilityGauges(client, [destination.name for destination in routing.destinations])
    counting = asyncio.create_task(gauges.run(settings.visibility_metrics_seconds))
    scope.callback(counting.cancel)


@app.command()
def gateway(verbose: Verbose = False) -> None:
    """Run only the MLLP gateway against an existing Temporal cluster."""
    from adapters.tls import TlsConfigError
    from workers.gateway import MllpGateway
    from workers.health import database_reachable, temporal_reachable
    from workers.metrics import (
        GatewayMetrics,
        configure_metrics,
        configure_temporal_metrics,
        metrics_router,
    )
    from workers.telemetry import configure_tracing

    configure_logging(verbose)
    settings = load_settings()
    configure_tracing(settings, "careweave-gateway")
    configure_temporal_metrics(settings)
    with_metrics = configure_metrics(settings, "careweave-gateway")

    async def run() -> None:
        # Commit off (benchmark floor only) needs no Temporal at all.
        client = await connect_temporal(settings) if settings.mllp_commit else None
        committer = ExchangeCommitter(client, settings) if client is not None else None
        store = open_store(settings, verify_keys=True)
        intake = MessageIntake(
            store,
            committer,
            fallback_charset=settings.fallback_charset,
            pseudonym_key=settings.resolved_pseudonym_key(),
        )
        metrics = GatewayMetrics(store) if with_metrics else None
        try:
            server = MllpGateway(intake, settings, metrics=metrics)
        except TlsConfigError as err:
            raise fail(f"MLLP gateway TLS: {err}") from err
        stop = stop_requested()
        await server.start()
        console.print(f"MLLP gateway listening on {settings.mllp_host}:{server.port}")
        async with contextlib.AsyncExitStack() as scope:
            if settings.gateway_health_port is not None:
                # Not ready while a message could not be committed: it would get AE, not AA.
                checks = {"database": database_reachable(store.engine)}
                if client is not None:
                    checks["temporal"] = temporal_reachable(client)
                await _serve_health(
                    scope,
                    "gateway",
                    settings.health_host,
                    settings.gateway_health_port,
                    checks,
                    [metrics_router()] if with_metrics else [],
                )
            await stop.wait()
        await server.close()

    asyncio.run(run())


@app.command()
def api(verbose: Verbose = False) -> None:
    """Run only the review and codec API (production: behind TLS)."""
    from workers.api import create_api, serving_api
    from workers.payload_codec import display_codec

    configure_logging(verbose)
    settings = load_settings()
    # The API encodes for the UI too: a key id with other bytes would write unreadable data.
    open_store(settings, verify_keys=True)

    async def run() -> None:
        client = await connect_temporal(settings)
        api_app = create_api(
            settings,
            client,
            # Strict decoding is for the worker; the UI must show a forged payload as it is.
            display_codec(client),
            open_audit_log(settings).aappend,
        )
        stop = stop_requested()
        try:
            async with serving_api(api_app, settings.api_host, settings.api_port) as port:
                console.print(f"API listening on http://{settings.api_host}:{port}")
                await stop.wait()
        except OSError as err:
            raise fail(str(err)) from err

    asyncio.run(run())


@app.command()
def demo(
    keep_running: Annotated[
        bool | None,
        typer.Option(
            help="Keep the stack up after the feed so you can browse the UI "
            "(default: yes when run from a terminal)"
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Start the stack, send the sample feed through the gateway, show what happened."""
    from workers.demo import run_demo

    configure_logging(verbose)
    if keep_running is None:
        keep_running = sys.stdin.isatty()
    run_demo(load_settings(), console, keep_running=keep_running)


async def _serve_health(
    scope: contextlib.AsyncExitStack,
    process: str,
    host: str,
    port: int,
    checks: dict[str, ReadinessCheck],
    routers: list[APIRouter],
) -> None:
    """Serve the process's /healthz and /readyz (and /metrics, in ``routers``) until
    ``scope`` closes; a port that cannot be bound stops the process with the reason."""
    from workers.health import serving_health

    try:
        bound = await scope.enter_async_context(
            serving_health(checks, host, port, name=process, routers=routers)
        )
    except OSError as err:
        raise fail(str(err)) from err
    console.print(f"{process} health probes on http://{host}:{bound}/readyz")


def _print_stack(stack: RunningStack) -> None:
    settings = stack.settings
    table = Table(title="Careweave embedded stack", show_header=False)
    table.add_row("MLLP gateway", f"{settings.mllp_host}:{stack.gateway.port}")
    table.add_row("Temporal", settings.temporal_address)
    table.add_row("Temporal UI (after sign-in, read-only)", stack.ui_url)
    table.add_row("FHIR R4", settings.fhir_base_url)
    table.add_row("Review/codec API", stack.api_url)
    table.add_row("Sign in (decoded payloads in the UI)", f"{stack.api_url}/login")
    table.add_row("Routing", f"{settings.destinations_file} ({stack.routing.label})")
    for partner in stack.partners:
        table.add_row(
            f"Partner {partner.name}",
            f"MLLP 127.0.0.1:{partner.mllp_port}, control {partner.control_url}/messages",
        )
    table.add_row("State folder", str(settings.state_dir.resolve()))
    console.print(table)
