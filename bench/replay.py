"""Downtime replay benchmark: discharge events (ADT^A03 then A13 per visit, several visits per
patient) to one MLLP partner system on the embedded stack, delivered live and replayed after
an outage, in the same run.

    .venv/bin/python bench/replay.py --events 10000 --patients 1000 --runs 1

Each run has two halves of the same shape, on different patients:

- **live**: the destination is up; from the first event sent through the gateway to the
  last acknowledged AA by the partner (ingest and delivery overlap, as they do in service).
- **replay**: an operator takes the destination down (the health workflow's `command`
  update, as `careweave destination down` sends it); the same number of events is sent and
  held by their per-patient queues; then `up`, and the clock runs from `up` to the last
  event acknowledged by the partner and the health workflow's replay finished.

The replay's own pacing is set far above what the machine can do (``--rate``) with
``--parallel`` patients at a time, so the figure is the engine's ceiling, not the rate a
hospital would configure to spare a recovering system (20 events/s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.destination_health import ensure_health_workflow
from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient
from exchanges.destination_health import health_policy
from models.destination_health import DestinationStatus, HealthState, OperatorCommand
from models.settings import Settings
from workers import sample_messages as sm
from workers.stack import RunningStack, embedded_stack
from workflows.destination_health import DestinationHealth

DESTINATION = "billing"
ROUTING = """
version = "bench-replay-1"
[[destination]]
name = "billing"
kind = "mllp"
subscribes = ["A03", "A13"]
[destination.mllp]
host = "127.0.0.1"
port = {billing}
receiving_application = "BILLING"
receiving_facility = "GENHOSP-FIN"
"""


def free_port() -> int:
    """A loopback port free now whose +10 (the partner's control port) is free too."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port + 10 > 65535:
            continue
        with socket.socket() as control:
            try:
                control.bind(("127.0.0.1", port + 10))
            except OSError:
                continue
        return port


def events(tag: str, patients: int, per_patient: int) -> list[str]:
    """``per_patient`` events for each patient: A03 then A13 of successive visits, patients
    interleaved as a hospital's feed would be."""
    messages: list[str] = []
    for n in range(per_patient):
        visit_of_patient, trigger = divmod(n, 2)
        for p in range(patients):
            stay = sm.SampleStay(
                f"VR{tag}{p:05d}{visit_of_patient:02d}",
                patient=sm.SamplePatient(mrn=f"MR{tag}{p:05d}"),
            )
            messages.append(sm.adt_event(stay, f"R{tag}-{p:05d}-{n:02d}", ("A03", "A13")[trigger]))
    return messages


async def send_all(stack: RunningStack, messages: list[str], senders: int) -> None:
    pending = iter(messages)

    async def sender() -> None:
        async with MllpClient("127.0.0.1", stack.gateway.port, timeout=120) as client:
            for message in pending:
                code, _, error = parse_ack(await client.send(message))
                if code != "AA":
                    raise RuntimeError(f"gateway answered {code} {error}")

    await asyncio.gather(*(sender() for _ in range(senders)))


async def acknowledged(http: httpx.AsyncClient, stack: RunningStack, tag: str) -> int:
    partner = stack.partners[0]
    records = (await http.get(f"{partner.control_url}/messages")).json()
    return sum(1 for r in records if r["answered"] == "AA" and f"|VR{tag}" in r["text"])


async def wait_acknowledged(stack: RunningStack, tag: str, count: int) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        deadline = time.perf_counter() + 3600
        while (done := await acknowledged(http, stack, tag)) < count:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{done} of {count} acknowledged after an hour")
            await asyncio.sleep(0.5)
        if done > count:
            raise RuntimeError(f"{done} acknowledged for {count} events: some twice")


@dataclass(frozen=True)
class RunFigures:
    live_seconds: float
    held_ingest_seconds: float
    replay_seconds: float


async def one_run(
    stack: RunningStack, run: int, patients: int, per_patient: int, senders: int
) -> RunFigures:
    base = time.strftime("%H%M%S")
    live_tag, held_tag = f"{base}L{run}", f"{base}H{run}"
    total = patients * per_patient
    health = await ensure_health_workflow(
        stack.client,
        DESTINATION,
        "mllp",
        health_policy(stack.settings),
        stack.settings.task_queue,
    )

    started = time.perf_counter()
    await send_all(stack, events(live_tag, patients, per_patient), senders)
    await wait_acknowledged(stack, live_tag, total)
    live = time.perf_counter() - started

    await health.execute_update(
        DestinationHealth.command,
        OperatorCommand(state=HealthState.DOWN, reason="bench outage", operator="bench"),
    )
    started = time.perf_counter()
    await send_all(stack, events(held_tag, patients, per_patient), senders)
    holding: DestinationStatus = await health.query(DestinationHealth.status)
    while holding.held_events < total:
        await asyncio.sleep(0.5)
        holding = await health.query(DestinationHealth.status)
    held_ingest = time.perf_counter() - started
    async with httpx.AsyncClient(timeout=120) as http:
        if await acknowledged(http, stack, held_tag):
            raise RuntimeError("the partner got events while the destination was down")

    started = time.perf_counter()
    await health.execute_update(
        DestinationHealth.command,
        OperatorCommand(state=HealthState.UP, reason="bench recovery", operator="bench"),
    )
    await wait_acknowledged(stack, held_tag, total)
    status: DestinationStatus = await health.query(DestinationHealth.status)
    while not status.replay_finished:
        await asyncio.sleep(0.2)
        status = await health.query(DestinationHealth.status)
    replay = time.perf_counter() - started
    assert status.replay is not None
    if status.replay.events_done != total:
        raise RuntimeError(f"replay counted {status.replay.events_done} events of {total}")
    print(
        f"run {run}: live {total / live:.1f} events/s ({live:.1f} s), "
        f"held {total} in {held_ingest:.1f} s, replay {total / replay:.1f} events/s "
        f"({replay:.1f} s)",
        flush=True,
    )
    return RunFigures(live, held_ingest, replay)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000, help="events per half of a run")
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=50, help="patients replayed at once")
    parser.add_argument("--rate", type=float, default=10_000.0, help="replay events/s cap")
    args = parser.parse_args()
    if args.events % args.patients:
        parser.error("--events must be a multiple of --patients (the same count per patient)")
    per_patient = args.events // args.patients

    with tempfile.TemporaryDirectory(prefix="careweave-bench-replay-") as state:
        routing = Path(state) / "destinations.toml"
        routing.write_text(ROUTING.format(billing=free_port()))
        fhir_port = free_port()
        settings = Settings(
            state_dir=Path(state),
            temporal_address=f"127.0.0.1:{free_port()}",
            temporal_ui_port=free_port(),
            mllp_port=free_port(),
            api_port=free_port(),
            fhir_server_port=fhir_port,
            fhir_base_url=f"http://127.0.0.1:{fhir_port}/fhir",
            destinations_file=routing,
            task_queue="careweave-bench-replay",
            replay_parallel_patients=args.parallel,
            replay_events_per_second=args.rate,
        )
        async with embedded_stack(settings) as stack:
            runs = [
                await one_run(stack, run, args.patients, per_patient, args.senders)
                for run in range(1, args.runs + 1)
            ]

    live = [args.events / r.live_seconds for r in runs]
    replay = [args.events / r.replay_seconds for r in runs]
    print(
        f"\n{args.events} events over {args.patients} patients ({per_patient} each, A03/A13 "
        f"pairs), 1 MLLP partner, {args.runs} run(s), replay {args.parallel} patients at "
        f"once, {os.cpu_count()} cores\n"
    )
    print("| delivery | median events/s | best events/s | runs |")
    print("|---|---|---|---|")
    print(
        f"| live (destination up, from first send) | {statistics.median(live):.1f} | "
        f"{max(live):.1f} | {', '.join(f'{x:.1f}' for x in live)} |"
    )
    print(
        f"| replay of held events (from `up`) | {statistics.median(replay):.1f} | "
        f"{max(replay):.1f} | {', '.join(f'{x:.1f}' for x in replay)} |"
    )


if __name__ == "__main__":
    asyncio.run(main())
