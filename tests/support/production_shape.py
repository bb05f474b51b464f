"""The production shape on one machine, every part a process of its own that a test or a
bench can kill and start again: the Temporal dev server (on a database file, so that a
restart gives the same server back), the demo FHIR server, MLLP partner systems, N
`careweave worker` and M `careweave gateway` processes, all on one PostgreSQL database
(the caller's) and one task queue, with one configuration as an operator would deploy it.

    async with production_shape(root, database_url, workers=2, gateways=1) as shape:
        port = shape.gateways[0].mllp_port       # MLLP in
        await shape.workers[0].kill()            # SIGKILL
        await shape.workers[0].start()           # a new process, same settings
        await shape.kill_temporal(); await shape.start_temporal()
        shape.freeze_fhir(); shape.thaw_fhir()   # SIGSTOP / SIGCONT
        shape.partners["billing"].messages()

bench/ imports it too (it puts the project root on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from tests.support.engine import TEST_KEY_RING
from tests.support.fhir_server import FhirServerProcess, fhir_server_process, free_port
from tests.support.partner import Partner, running_partner
from tests.support.processes import (
    START_SECONDS,
    CareweaveProcess,
    DevServer,
    careweave_env,
    careweave_process,
)
from workers.temporal_client import connect_to

WORKER_READY = r"^routing "
GATEWAY_READY = r"MLLP gateway listening on "

# As `careweave up` runs its dev server: measured ~3x more durable starts per second, and
# it survives a process crash, which is what the SIGKILL of the server tests.
SQLITE_PRAGMAS = ("--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal")


class CareweaveService:
    """One `careweave worker` or `careweave gateway`: started, SIGKILLed and started again
    with the same environment (a gateway keeps its MLLP port, as behind a load balancer)."""

    def __init__(self, name: str, command: str, ready: str, env: dict[str, str]) -> None:
        self.name = name
        self._command = command
        self._ready = ready
        self._env = env
        self._scope: contextlib.AsyncExitStack | None = None
        self._drain: asyncio.Task[None] | None = None
        self.process: CareweaveProcess | None = None
        # Every line printed by every run of this service, for a failure report.
        self.output: list[str] = []
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.process.returncode is None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} is not running"
        return self.process.pid

    async def start(self) -> None:
        assert self._scope is None, f"{self.name} is already running"
        scope = contextlib.AsyncExitStack()
        process = await scope.enter_async_context(careweave_process(self._command, env=self._env))
        self._scope, self.process = scope, process
        self.starts += 1
        try:
            await process.wait_for_line(self._ready, timeout=START_SECONDS)
        except BaseException:
            await self._close()
            raise
        # Read on for the process's lifetime: a full pipe would block its logging.
        self._drain = asyncio.create_task(process.drain())

    async def kill(self) -> None:
        """SIGKILL: nothing finished, nothing flushed (a power cut, an OOM kill)."""
        if self.process is not None and self.process.process.returncode is None:
            self.process.process.send_signal(signal.SIGKILL)
            await self.process.process.wait()
        await self._close()

    async def stop(self) -> None:
        """SIGTERM, as a service manager stops it (careweave_process's own ending)."""
        await self._close()

    async def _close(self) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            await scope.aclose()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 10)
            self._drain = None
        if self.process is not None:
            self.output.extend(self.process.lines)
            self.process = None


class Gateway(CareweaveService):
    def __init__(self, name: str, env: dict[str, str], mllp_port: int) -> None:
        super().__init__(
            name, "gateway", GATEWAY_READY, {**env, "CAREWEAVE_MLLP_PORT": str(mllp_port)}
        )
        self.mllp_port = mllp_port


@dataclass
class ProductionShape:
    temporal: DevServer
    fhir: FhirServerProcess
    partners: dict[str, Partner]
    workers: list[CareweaveService]
    gateways: list[Gateway]
    env: dict[str, str]
    task_queue: str

    @property
    def fhir_base_url(self) -> str:
        return self.fhir.base_url

    @property
    def temporal_address(self) -> str:
        return self.temporal.address

    async def client(self) -> Client:
        """A Temporal client configured as Careweave's processes connect (payload codec)."""
        return await connect_to(self.temporal.address, TEST_KEY_RING)

    def kill_temporal(self) -> None:
        """SIGKILL the dev server; start_temporal() brings it back on the same file."""
        self.temporal.kill()

    async def start_temporal(self) -> None:
        self.temporal.start()
        await wait_for_temporal(self.temporal.address)

    def freeze_fhir(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers (a hung
        server, a long GC pause), the harder fault for a client than a refused connection."""
        self.fhir.process.send_signal(signal.SIGSTOP)

    def thaw_fhir(self) -> None:
        self.fhir.process.send_signal(signal.SIGCONT)

    def pids(self) -> dict[str, int]:
        """The running processes by name (for CPU figures)."""
        found = {"temporal": self.temporal.pid, "fhir": self.fhir.process.pid}
        found |= {s.name: s.pid for s in [*self.workers, *self.gateways] if s.running}
        return {name: pid for name, pid in found.items() if pid is not None}


async def wait_for_temporal(address: str, timeout: float = START_SECONDS) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await connect_to(address, TEST_KEY_RING)
                return
            except RuntimeError:
                await asyncio.sleep(0.3)


ROUTING = """
version = "production-shape-1"

[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03", "A13", "A08-diagnosis"]
[destination.fhir]
base_url = "{fhir}"

[[destination]]
name = "billing"
kind = "mllp"
subscribes = ["A03", "A13", "A08-diagnosis"]
[destination.mllp]
host = "127.0.0.1"
port = {billing}
receiving_application = "BILLING"
receiving_facility = "GENHOSP-FIN"
"""


@contextlib.asynccontextmanager
async def production_shape(
    root: Path,
    database_url: str,
    *,
    workers: int = 2,
    gateways: int = 1,
    task_queue: str = "careweave-production-shape",
    pseudonym_key: str = "production shape, one pseudonym key",
    settings: dict[str, str] | None = None,
) -> AsyncIterator[ProductionShape]:
    """Every part running and ready until the block ends; then each is stopped.

    Discharges go to the FHIR server (fhir-platform) and the MLLP partner `billing`
    (ROUTING); the lab exchanges write to the same FHIR server. ``settings`` are more
    CAREWEAVE_* values (by lower-case setting name) for every worker and gateway.
    """
    state_dir = root / "careweave"
    routing = root / "destinations.toml"
    temporal = DevServer(root, *SQLITE_PRAGMAS)
    with contextlib.ExitStack() as sync_scope:
        fhir = sync_scope.enter_context(fhir_server_process())
        billing = sync_scope.enter_context(running_partner("billing"))
        _write_state(state_dir, routing, fhir.base_url, billing)
        env = careweave_env(
            state_dir,
            temporal.address,
            database_url=database_url,
            task_queue=task_queue,
            fhir_base_url=fhir.base_url,
            destinations_file=str(routing),
            # Every process must compute the same exchange for the same business key.
            pseudonym_key=pseudonym_key,
            **(settings or {}),
        )
        temporal.start()
        sync_scope.callback(temporal.stop)
        await wait_for_temporal(temporal.address)
        shape = ProductionShape(
            temporal=temporal,
            fhir=fhir,
            partners={"billing": billing},
            workers=[
                CareweaveService(f"worker-{n}", "worker", WORKER_READY, env)
                for n in range(1, workers + 1)
            ],
            gateways=[Gateway(f"gateway-{n}", env, free_port()) for n in range(1, gateways + 1)],
            env=env,
            task_queue=task_queue,
        )
        try:
            # One after the other: the first start makes the state folder's key files.
            for service in [*shape.workers, *shape.gateways]:
                await service.start()
            yield shape
        finally:
            # A frozen FHIR server would not stop either; nothing left half-stopped.
            with contextlib.suppress(ProcessLookupError):
                shape.thaw_fhir()
            for service in [*shape.gateways, *shape.workers]:
                with contextlib.suppress(Exception):
                    await service.stop()


def _write_state(state_dir: Path, routing: Path, fhir_base_url: str, billing: Partner) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    routing.write_text(ROUTING.format(fhir=fhir_base_url, billing=billing.mllp_port))
