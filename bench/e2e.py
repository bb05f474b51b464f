"""End-to-end throughput: a mixed feed of lab orders, their results and discharges through
the production shape, beside bare Temporal workflows with the same durable steps per
message and no-op activities (bench/bare_workflows.py), in the same run.

    PYTHONPATH=. .venv/bin/python bench/e2e.py --orders 300 --discharges 100 --rounds 3

Production shape, each a process of its own on loopback: the Temporal dev server
(file-backed SQLite, WAL, as `careweave up` starts it), `careweave worker`, `careweave
gateway` and the demo FHIR server (one FHIR destination for discharges). The feed is sent
as fast as the gateway takes it: orders and discharges mixed, then the orders' results
(a result is sent once its order is acknowledged, as a lab answers after the order).
"Fully processed" is counted on the FHIR server: every ServiceRequest, DiagnosticReport
and finished Encounter there. The baseline sends the same number of messages by
signal-with-start to bare workflows on a fresh dev server of the same kind, and is done
when every bare workflow has completed. It runs twice per round: with the lab's FHIR
write, the discharge's hand-off to its queue and the queue's delivery as local activities
(the steps the exchanges take now) and as activities (the steps they took before
`lab-writes-local-first` and `delivery-local-first`), so the ratio to each can be read. Each
round runs every path on fresh servers; the report gives the median and best round of
each and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient
from bench.bare_workflows import BareDischarge, BareMessage, BareOrder
from bench.ingest import cpu_snapshot
from models.settings import Settings
from tests.support.fhir_server import free_port, running_fhir_server
from tests.support.processes import CareweaveProcess, careweave_env, careweave_process
from tests.support.separate_worker import WORKER_READY
from workers import sample_messages as sm
from workers.stack import dev_server_command

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GATEWAY_READY = r"MLLP gateway listening"
BARE_WORKER_READY = r"bare worker running"
PRODUCTION = "production shape"
PRODUCTION_BEFORE = "production shape, --before checkout"
DONE_WITHIN_SECONDS = 1800
ROUTING = """
version = "bench-e2e-1"
[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03", "A13", "A08-diagnosis"]
[destination.fhir]
base_url = "{fhir_base_url}"
"""
# Worker log lines that say work was wasted under load.
OVER_DEADLINE = "TMPRL1104"
TASK_NOT_FOUND = "not found"


@dataclass
class Feed:
    """The messages of one round: orders and discharges mixed, then the results."""

    first: list[str]
    results: list[str]
    orders: int
    discharges: int

    @property
    def total(self) -> int:
        return len(self.first) + len(self.results)


def mixed_feed(tag: str, orders: int, discharges: int) -> Feed:
    first: list[str] = []
    results: list[str] = []
    every = max(1, orders // max(1, discharges))
    discharged = 0
    for index in range(orders):
        # One patient per order: per-patient order is kept within a patient, not across.
        patient = sm.SamplePatient(mrn=f"ME{tag}{index:05d}")
        order = sm.SampleOrder(f"E{tag}{index:05d}", patient=patient)
        first.append(sm.lab_order(order, f"O{tag}-{index:05d}"))
        results.append(sm.lab_result(order, f"R{tag}-{index:05d}", [sm.SODIUM, sm.POTASSIUM]))
        if index % every == every - 1 and discharged < discharges:
            first.append(discharge(tag, discharged))
            discharged += 1
    first.extend(discharge(tag, i) for i in range(discharged, discharges))
    return Feed(first, results, orders, discharges)


def discharge(tag: str, index: int) -> str:
    stay = sm.SampleStay(f"VE{tag}{index:05d}", patient=sm.SamplePatient(mrn=f"MD{tag}{index:05d}"))
    return sm.adt_event(stay, f"D{tag}-{index:05d}", "A03")


@dataclass
class Figures:
    name: str
    messages: int
    acked_seconds: float
    done_seconds: float
    cpu_ms: dict[str, float] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.done_seconds

    @property
    def ack_rate(self) -> float:
        return self.messages / self.acked_seconds


async def send_all(
    messages: list[str], senders: int, send: Callable[[str], Awaitable[None]]
) -> None:
    pending = iter(messages)

    async def sender() -> None:
        for message in pending:
            await send(message)

    await asyncio.gather(*(sender() for _ in range(senders)))


async def wait_until(done: Callable[[], Awaitable[bool]], started: float) -> float:
    while not await done():
        if time.perf_counter() - started > DONE_WITHIN_SECONDS:
            raise RuntimeError(f"not fully processed after {DONE_WITHIN_SECONDS} s")
        await asyncio.sleep(0.5)
    return time.perf_counter() - started


# -- the production shape -----------------------------------------------------------------


@dataclass
class ProductionShape:
    mllp_port: int
    fhir_base_url: str
    pids: dict[str, int]
    worker: CareweaveProcess
    gateway: CareweaveProcess

    def check_running(self) -> None:
        """A worker or gateway that exited fails the round at once, with its last output,
        rather than leaving it to wait out DONE_WITHIN_SECONDS."""
        for name, process in (("worker", self.worker), ("gateway", self.gateway)):
            code = process.process.returncode
            if code is not None:
                tail = "\n".join(process.lines[-40:])
                raise RuntimeError(f"the {name} exited with {code} mid-round:\n{tail}")


@contextlib.asynccontextmanager
async def dev_server(state: Path, source: Path | None = None) -> AsyncIterator[tuple[str, int]]:
    """A fresh file-backed dev server as `careweave up` starts it (that of ``source``, another
    checkout, when given: its server flags are part of what it ships); yields address, pid."""
    address = f"127.0.0.1:{free_port()}"
    settings = Settings(state_dir=state, temporal_address=address, temporal_ui_port=free_port())
    command = dev_server_command(settings) if source is None else _command_of(source, settings)
    with (state / "temporal.log").open("ab") as log:
        server = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                await Client.connect(address)
                break
            except RuntimeError:
                await asyncio.sleep(0.3)
        yield address, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def _command_of(source: Path, settings: Settings) -> list[str]:
    """The dev server command ``source``'s own `careweave up` would run with ``settings``."""
    script = (
        "import json, sys; from pathlib import Path; from models.settings import Settings; "
        "from workers.stack import dev_server_command; "
        "print(json.dumps(dev_server_command(Settings(state_dir=Path(sys.argv[1]), "
        "temporal_address=sys.argv[2], temporal_ui_port=int(sys.argv[3])))))"
    )
    arguments = [str(settings.state_dir), settings.temporal_address]
    printed = subprocess.run(
        [sys.executable, "-c", script, *arguments, str(settings.temporal_ui_port)],
        cwd=source,
        env={**os.environ, "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command: list[str] = json.loads(printed)
    return command


@contextlib.asynccontextmanager
async def production_shape(state: Path, source: Path | None) -> AsyncIterator[ProductionShape]:
    """The four processes; the worker and gateway run from ``source`` (another checkout of
    Careweave, e.g. the commit before a change) when given, else from this one."""
    routing = state / "destinations.toml"
    mllp_port = free_port()
    with running_fhir_server() as fhir_base_url:
        routing.write_text(ROUTING.format(fhir_base_url=fhir_base_url))
        async with dev_server(state, source) as (address, temporal_pid):
            env = careweave_env(
                state,
                address,
                task_queue="careweave-e2e",
                fhir_base_url=fhir_base_url,
                destinations_file=str(routing),
                mllp_port=str(mllp_port),
            )
            if source is not None:
                env["PYTHONPATH"] = str(source)
            # One after the other: checkouts before 2026-12-04 fail one of two processes
            # started at once on a fresh database (both record the new payload key).
            async with careweave_process("worker", env=env, cwd=source) as worker:
                await worker.wait_for_line(WORKER_READY)
                async with careweave_process("gateway", env=env, cwd=source) as gateway:
                    await gateway.wait_for_line(GATEWAY_READY)
                    # Read their output as it comes: a full pipe would stall them.
                    readers = [asyncio.create_task(p.drain()) for p in (worker, gateway)]
                    pids = {"Temporal server": temporal_pid, "worker": worker.pid}
                    pids["gateway"] = gateway.pid
                    pids["FHIR server"] = fhir_server_pid(fhir_base_url)
                    try:
                        yield ProductionShape(mllp_port, fhir_base_url, pids, worker, gateway)
                    finally:
                        for reader in readers:
                            reader.cancel()
                        await asyncio.gather(*readers, return_exceptions=True)


def fhir_server_pid(base_url: str) -> int:
    """The Node process listening on the FHIR server's port (for its CPU time)."""
    port = base_url.split(":")[2].split("/")[0]
    found = subprocess.run(
        ["sh", "-c", f"ss -ltnpH 'sport = :{port}' | grep -o 'pid=[0-9]*' | head -1"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return int(found.removeprefix("pid=")) if found else 0


async def fhir_total(http: httpx.AsyncClient, base_url: str, query: str) -> int:
    bundle = (await http.get(f"{base_url}/{query}", params={"_count": "0"})).json()
    return int(bundle.get("total", 0))


@contextlib.contextmanager
def profiled(pids: dict[str, int], into: Path | None) -> Iterator[None]:
    """py-spy sampling each process (collapsed stacks into ``into``/<name>.txt) meanwhile."""
    if into is None:
        yield
        return
    into.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                "50",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(into / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(timeout=60)


async def run_production(
    name: str,
    state: Path,
    feed: Feed,
    senders: int,
    *,
    source: Path | None = None,
    profile: Path | None = None,
) -> Figures:
    async with production_shape(state, source) as shape:
        free: asyncio.Queue[MllpClient] = asyncio.Queue()
        clients = [MllpClient("127.0.0.1", shape.mllp_port, timeout=120) for _ in range(senders)]
        for client in clients:
            await client.__aenter__()
            free.put_nowait(client)

        async def send(message: str) -> None:
            client = await free.get()
            try:
                code, _, _ = parse_ack(await client.send(message))
            finally:
                free.put_nowait(client)
            if code != "AA":
                raise RuntimeError(f"gateway answered {code}")

        async with httpx.AsyncClient(timeout=60) as http:

            async def fully_processed() -> bool:
                shape.check_running()
                base = shape.fhir_base_url
                return (
                    await fhir_total(http, base, "Encounter?status=finished") >= feed.discharges
                    and await fhir_total(http, base, "DiagnosticReport") >= feed.orders
                    and await fhir_total(http, base, "ServiceRequest") >= feed.orders
                )

            pids = {**shape.pids, "bench": os.getpid()}
            cpu_before = cpu_snapshot(pids)
            python = {name: shape.pids[name] for name in ("worker", "gateway")}
            with profiled(python, profile):
                started = time.perf_counter()
                await send_all(feed.first, senders, send)
                await send_all(feed.results, senders, send)
                acked = time.perf_counter() - started
                done = await wait_until(fully_processed, started)
                cpu_after = cpu_snapshot(pids)
        for client in clients:
            await client.__aexit__(None, None, None)
        lines = shape.worker.lines
    return Figures(
        name,
        feed.total,
        acked,
        done,
        {key: (cpu_after[key] - cpu_before[key]) * 1000 / feed.total for key in pids},
        {
            "workflow tasks over deadline (TMPRL1104)": sum(OVER_DEADLINE in li for li in lines),
            "'not found' completions": sum(TASK_NOT_FOUND in li for li in lines),
        },
    )


# -- the bare baseline --------------------------------------------------------------------


BARE_NOW = "bare Temporal, no-op activities, writes/hand-offs local (this code's steps)"
BARE_EARLIER = "bare Temporal, no-op activities, writes/hand-offs as activities (earlier steps)"


async def run_bare(state: Path, feed: Feed, senders: int, *, local_steps: bool) -> Figures:
    task_queue = "bare-e2e"
    async with dev_server(state) as (address, temporal_pid):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("bare_workflows.py")),
            "--address",
            address,
            "--task-queue",
            task_queue,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        worker = CareweaveProcess(process)
        await worker.wait_for_line(BARE_WORKER_READY)
        # Read its output as it comes (warnings under load): a full pipe would stall it.
        reader = asyncio.create_task(worker.drain())
        try:
            client = await Client.connect(address)
            order_ids = iter(range(feed.orders))
            result_ids = iter(range(feed.orders))
            discharge_ids = iter(range(feed.discharges))

            async def send(message: str) -> None:
                if "|ADT^" in message:
                    await client.start_workflow(
                        BareDischarge.run,
                        local_steps,
                        id=f"bare-discharge/{next(discharge_ids)}",
                        task_queue=task_queue,
                        start_signal="message",
                        start_signal_args=[BareMessage("discharge", message)],
                    )
                    return
                result = "ORU^R01" in message
                index = next(result_ids) if result else next(order_ids)
                await client.start_workflow(
                    BareOrder.run,
                    local_steps,
                    id=f"bare-order/{index}",
                    task_queue=task_queue,
                    start_signal="message",
                    start_signal_args=[BareMessage("result" if result else "order", message)],
                )

            expected = feed.orders + 2 * feed.discharges

            async def all_completed() -> bool:
                count = await client.count_workflows("ExecutionStatus = 'Completed'")
                return count.count >= expected

            pids = {"Temporal server": temporal_pid, "worker": worker.pid, "bench": os.getpid()}
            cpu_before = cpu_snapshot(pids)
            started = time.perf_counter()
            await send_all(feed.first, senders, send)
            await send_all(feed.results, senders, send)
            acked = time.perf_counter() - started
            done = await wait_until(all_completed, started)
            cpu_after = cpu_snapshot(pids)
        finally:
            process.terminate()
            await process.wait()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            over_deadline = sum(OVER_DEADLINE in line for line in worker.lines)
    return Figures(
        BARE_NOW if local_steps else BARE_EARLIER,
        feed.total,
        acked,
        done,
        {key: (cpu_after[key] - cpu_before[key]) * 1000 / feed.total for key in pids},
        {"workflow tasks over deadline (TMPRL1104)": over_deadline},
    )


# -- report -------------------------------------------------------------------------------


def summary(runs: list[Figures]) -> tuple[float, float]:
    rates = [run.rate for run in runs]
    return statistics.median(rates), max(rates)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--discharges", type=int, default=100)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-bare", action="store_true", help="production shape only")
    parser.add_argument(
        "--before",
        type=Path,
        help="also run the production shape from this checkout (e.g. `git archive` of the "
        "commit before a change) in every round, for before/after figures of one run",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the worker and gateway into this folder (collapsed stacks, per round)",
    )
    args = parser.parse_args()

    production: list[Figures] = []
    before: list[Figures] = []
    bare: list[Figures] = []
    bare_earlier: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="careweave-bench-e2e-") as base:
        for index in range(args.rounds):
            for path in ("bare", "bare-earlier", "before", "prod"):
                (Path(base) / f"{path}{index}").mkdir()
            tag = f"{time.strftime('%H%M%S')}{index}"
            feed = mixed_feed(tag, args.orders, args.discharges)
            if not args.skip_bare:
                state = Path(base) / f"bare{index}"
                bare.append(await run_bare(state, feed, args.senders, local_steps=True))
                state = Path(base) / f"bare-earlier{index}"
                bare_earlier.append(await run_bare(state, feed, args.senders, local_steps=False))
            if args.before:
                before.append(
                    await run_production(
                        PRODUCTION_BEFORE,
                        Path(base) / f"before{index}",
                        mixed_feed(f"{tag}b", args.orders, args.discharges),
                        args.senders,
                        source=args.before.resolve(),
                    )
                )
            profile = args.profile / f"round{index + 1}" if args.profile else None
            production.append(
                await run_production(
                    PRODUCTION, Path(base) / f"prod{index}", feed, args.senders, profile=profile
                )
            )
            line = f"round {index + 1}: production {production[-1].rate:.1f}/s"
            line += f" (ACK {production[-1].ack_rate:.0f}/s)"
            if before:
                line += f", before {before[-1].rate:.1f}/s"
            if bare:
                line += f", bare {bare[-1].rate:.1f}/s ({production[-1].rate / bare[-1].rate:.0%})"
                line += f", bare with the earlier steps {bare_earlier[-1].rate:.1f}/s"
            print(line, flush=True)

    feed_line = (
        f"{args.orders} lab orders + {args.orders} results + {args.discharges} discharges "
        f"({feed.total} messages), {args.senders} concurrent senders, {os.cpu_count()} cores, "
        f"{args.rounds} round(s), each path on a fresh dev server"
    )
    print(f"\n{feed_line}\n")
    print("| path | fully processed msg/s, median | best | durable ACK msg/s, median |")
    print("|---|---|---|---|")
    for runs in (production, before, bare, bare_earlier):
        if runs:
            median, best = summary(runs)
            ack = statistics.median(run.ack_rate for run in runs)
            print(f"| {runs[0].name} | {median:.1f} | {best:.1f} | {ack:.0f} |")
    if bare:
        ratio = summary(production)[0] / summary(bare)[0]
        print(f"\nproduction shape = {ratio:.2f}x the bare baseline (medians)")
        earlier = summary(production)[0] / summary(bare_earlier)[0]
        print(f"production shape = {earlier:.2f}x the bare baseline of the earlier steps")
    if before:
        gain = summary(production)[0] / summary(before)[0]
        print(f"production shape = {gain:.2f}x the checkout before (medians)")
    print("\nCPU milliseconds per message, by process (median round):\n")
    for runs in (production, before, bare, bare_earlier):
        if runs:
            middle = sorted(runs, key=lambda run: run.rate)[len(runs) // 2]
            cells = ", ".join(f"{name} {ms:.1f}" for name, ms in middle.cpu_ms.items())
            print(f"- {middle.name}: {cells}")
            for note, count in middle.notes.items():
                print(f"  - {note}: {count}")


if __name__ == "__main__":
    asyncio.run(main())
