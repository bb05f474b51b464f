"""An engine whose Temporal worker is a process of its own (`careweave worker`, as an
operator runs it), so a test can SIGKILL it in the middle of its work and start another.

The MLLP gateway and the intake stay in the test's process (what the tests send and read
through), on the same state folder, task queue and settings as the worker process.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import Client

from adapters.database import CareweaveStore
from exchanges.commit import ExchangeCommitter
from tests.support.engine import (
    TEST_KEY_RING,
    TEST_PAYLOAD_KEYS,
    Engine,
    _end_destination_health,
    engine_settings,
)
from tests.support.processes import CareweaveProcess, careweave_env, careweave_process
from workers.gateway import MllpGateway
from workers.intake import MessageIntake
from workers.worker import lab_fhir_client

WORKER_READY = r"^routing "


def worker_environment(engine: Engine, client: Client) -> dict[str, str]:
    """The environment of a `careweave worker` process with ``engine``'s settings."""
    settings = engine.settings.model_dump(
        include={
            "task_queue",
            "fhir_base_url",
            "destinations_file",
            "pseudonym_key",
            "patient_sync_close_after_seconds",
            "destination_failures_to_trip",
            "destination_first_probe_seconds",
            "destination_max_probe_seconds",
            "destination_probe_timeout_seconds",
            "replay_parallel_patients",
            "replay_events_per_second",
        },
        exclude_none=True,
    )
    return careweave_env(
        engine.settings.state_dir,
        client.service_client.config.target_host,
        **{name: str(value) for name, value in settings.items()},
    )


@contextlib.asynccontextmanager
async def running_worker(engine: Engine, client: Client) -> AsyncIterator[CareweaveProcess]:
    """`careweave worker` until the block ends (SIGTERM then), once it has loaded its routing."""
    async with careweave_process("worker", env=worker_environment(engine, client)) as worker:
        await worker.wait_for_line(WORKER_READY)
        yield worker


async def kill(worker: CareweaveProcess) -> None:
    """SIGKILL: no shutdown, no activity completed, nothing flushed (a power cut, an OOM kill)."""
    worker.process.send_signal(signal.SIGKILL)
    await worker.process.wait()


@contextlib.asynccontextmanager
async def engine_without_worker(
    client: Client, fhir_base_url: str, state_dir: Path, **overrides: object
) -> AsyncIterator[Engine]:
    """The gateway and intake of an engine whose worker runs elsewhere (running_worker)."""
    settings = engine_settings(state_dir, fhir_base_url, **overrides)
    key_file = state_dir / "payload.keys"
    key_file.write_text(TEST_PAYLOAD_KEYS + "\n")
    key_file.chmod(0o600)
    store = CareweaveStore.from_url(settings.resolved_database_url, TEST_KEY_RING)
    async with lab_fhir_client(settings, timeout=10) as fhir:
        intake = MessageIntake(
            store,
            ExchangeCommitter(client, settings),
            pseudonym_key=settings.resolved_pseudonym_key(),
        )
        gateway = MllpGateway(intake, settings)
        await gateway.start()
        try:
            yield Engine(client, settings, gateway, store, fhir, intake)
        finally:
            await gateway.close()
            await _end_destination_health(client, settings.task_queue)
