"""Discharge fan-out benchmark: ADT^A03s through the gateway to three destinations
(the FHIR server and two MLLP partner systems), on the embedded stack.

    .venv/bin/python bench/discharge.py --discharges 200 --senders 16

Reports, side by side in one run: how fast the gateway durably accepted the discharges
(ACK throughput, the foundation's ingest figure for this message type) and how fast they
were fully delivered: each discharge's A03 acknowledged AA by both partners and its
Encounter written to FHIR. Every discharge is a different patient, so the per-patient
queues run in parallel, as they would for a hospital's discharges.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient
from models.settings import Settings
from workers import sample_messages as sm
from workers.stack import RunningStack, embedded_stack

ROUTING = """
version = "bench-1"
[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03", "A13", "A08-diagnosis"]
[destination.fhir]
base_url = "http://127.0.0.1:{fhir_port}/fhir"
[[destination]]
name = "primary-care"
kind = "mllp"
subscribes = ["A03", "A13"]
[destination.mllp]
host = "127.0.0.1"
port = {primary_care}
receiving_application = "PCEHR"
receiving_facility = "NORTHCLINIC"
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


async def send_all(stack: RunningStack, messages: list[str], senders: int) -> list[float]:
    latencies: list[float] = []
    pending = iter(messages)

    async def sender() -> None:
        async with MllpClient("127.0.0.1", stack.gateway.port, timeout=60) as client:
            for message in pending:
                started = time.perf_counter()
                code, _, _ = parse_ack(await client.send(message))
                if code != "AA":
                    raise RuntimeError(f"gateway answered {code}")
                latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(sender() for _ in range(senders)))
    return latencies


async def delivered(stack: RunningStack, tag: str, *, with_fhir: bool) -> dict[str, int]:
    counts: dict[str, int] = {}
    # Generous timeouts: the FHIR server is one Node thread busy with the transactions.
    async with httpx.AsyncClient(timeout=120) as http:
        for partner in stack.partners:
            records = (await http.get(f"{partner.control_url}/messages")).json()
            counts[partner.name] = sum(
                1 for r in records if r["answered"] == "AA" and f"|VB{tag}" in r["text"]
            )
        if with_fhir:
            bundle = (
                await http.get(
                    f"{stack.settings.fhir_base_url}/Encounter",
                    params={"status": "finished", "_summary": "count"},
                )
            ).json()
            counts["fhir-platform"] = int(bundle.get("total", 0))
    return counts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--discharges", type=int, default=200)
    parser.add_argument("--senders", type=int, default=16)
    args = parser.parse_args()
    tag = time.strftime("%H%M%S")

    with tempfile.TemporaryDirectory(prefix="careweave-bench-discharge-") as state:
        routing = Path(state) / "destinations.toml"
        routing.write_text(ROUTING.format(fhir_port=18080, primary_care=12676, billing=12677))
        settings = Settings(
            state_dir=Path(state),
            temporal_address="127.0.0.1:17243",
            temporal_ui_port=18243,
            mllp_port=12675,
            fhir_server_port=18080,
            fhir_base_url="http://127.0.0.1:18080/fhir",
            destinations_file=routing,
            task_queue="careweave-bench-discharge",
        )
        messages = [
            sm.adt_event(
                sm.SampleStay(f"VB{tag}{i:05d}", patient=sm.SamplePatient(mrn=f"MB{tag}{i:05d}")),
                f"B{tag}-{i:05d}",
                "A03",
            )
            for i in range(args.discharges)
        ]
        async with embedded_stack(settings) as stack:
            started = time.perf_counter()
            latencies = await send_all(stack, messages, args.senders)
            acked = time.perf_counter() - started
            counts: dict[str, int] = {}
            while True:
                # Ask FHIR only once the partners are done: its count is costly to serve.
                counts = await delivered(stack, tag, with_fhir=False)
                if all(count >= args.discharges for count in counts.values()):
                    counts = await delivered(stack, tag, with_fhir=True)
                    if counts["fhir-platform"] >= args.discharges:
                        break
                if time.perf_counter() - started > 1800:
                    raise RuntimeError(f"not delivered after 30 min: {counts}")
                await asyncio.sleep(1.0)
            done = time.perf_counter() - started

    lat = sorted(latencies)
    print(
        f"\n{args.discharges} ADT^A03 discharges (each a different patient), "
        f"{args.senders} concurrent senders, 3 destinations, {os.cpu_count()} cores\n"
    )
    print("| measure | discharges/s | detail |")
    print("|---|---|---|")
    print(
        f"| gateway durable ACK (ingest) | {args.discharges / acked:.1f} | "
        f"ACK p50 {statistics.median(lat):.0f} ms, p99 {lat[int(len(lat) * 0.99) - 1]:.0f} ms |"
    )
    print(
        f"| fully delivered (FHIR + 2 MLLP partners) | {args.discharges / done:.1f} | "
        f"{3 * args.discharges} deliveries in {done:.1f} s = {3 * args.discharges / done:.1f}/s |"
    )


if __name__ == "__main__":
    asyncio.run(main())
