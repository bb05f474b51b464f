"""Ingest benchmark: durable-ACK throughput and ACK latency of the MLLP gateway,
side by side in one run with (a) bare Temporal signal-with-start at the same
concurrency and (b) the gateway with commit turned off (parse + ACK only).

    .venv/bin/python bench/ingest.py --messages 2000 --senders 32

Starts its own Temporal dev server (file-backed SQLite, WAL + synchronous=normal,
as `careweave up` does) in a temporary folder; the gateway runs as its own
process (`careweave gateway`) so it does not share an event loop with the senders.
No worker runs: this measures ingest (the durable hand-off), not the exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient
from models.messages import InboundMessage
from models.settings import Settings
from workers import sample_messages as sm
from workers.routing import Route
from workers.stack import dev_server_command
from workers.temporal_client import connect
from workers.temporal_commit import TemporalCommitter


@dataclass
class Figures:
    name: str
    messages: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    def row(self) -> str:
        lat = sorted(self.latencies_ms)
        p50 = statistics.median(lat) if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        rate = self.messages / self.seconds if self.seconds else 0.0
        cells = (self.name, self.messages, f"{rate:.0f}", f"{p50:.1f}", f"{p99:.1f}", self.errors)
        return "| " + " | ".join(str(cell) for cell in cells) + " |"


def result_message(tag: str, index: int) -> str:
    order = sm.SampleOrder(f"B{tag}{index:06d}")
    return sm.lab_result(order, f"{tag}-{index:06d}", [sm.SODIUM, sm.POTASSIUM])


async def _drive(
    name: str, total: int, senders: int, send_one: Callable[[int], Awaitable[bool]]
) -> Figures:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def sender() -> None:
        nonlocal errors
        for index in counter:
            started = time.perf_counter()
            ok = await send_one(index)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return Figures(name, total, time.perf_counter() - started, latencies, errors)


async def bench_gateway(name: str, port: int, tag: str, total: int, senders: int) -> Figures:
    clients = [MllpClient("127.0.0.1", port, timeout=60) for _ in range(senders)]
    for client in clients:
        await client.__aenter__()
    free = asyncio.Queue[MllpClient]()
    for client in clients:
        free.put_nowait(client)

    async def send_one(index: int) -> bool:
        client = await free.get()
        try:
            code, _, _ = parse_ack(await client.send(result_message(tag, index)))
            return code == "AA"
        finally:
            free.put_nowait(client)

    try:
        return await _drive(name, total, senders, send_one)
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)


async def bench_bare_temporal(settings: Settings, tag: str, total: int, senders: int) -> Figures:
    client = await connect(settings)
    committer = TemporalCommitter(client, settings)

    async def send_one(index: int) -> bool:
        text = result_message(tag, index)
        route = Route(
            exchange="order-to-result",
            workflow_type="OrderToResult",
            workflow_id=f"order-to-result/BENCH/{tag}{index:06d}",
            signal="result_message",
            facility="BENCH",
            business_key=f"{tag}{index:06d}",
            placer_order_number=f"{tag}{index:06d}",
            placer_namespace="",
        )
        message = InboundMessage(
            text=text,
            message_type="ORU^R01",
            control_id=f"{tag}-{index}",
            sending_facility=sm.LAB,
            received_at=datetime.now(UTC),
        )
        await committer.commit(route, message)
        return True

    return await _drive("bare Temporal signal-with-start", total, senders, send_one)


def start_gateway(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    careweave = Path(sys.executable).parent / "careweave"
    return subprocess.Popen(
        [str(careweave), "gateway"], env=env, stdout=log_path.open("ab"), stderr=subprocess.STDOUT
    )


async def wait_for_port(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="careweave-bench-") as state:
        env = {
            **os.environ,
            "CAREWEAVE_STATE_DIR": state,
            "CAREWEAVE_TEMPORAL_ADDRESS": "127.0.0.1:17233",
            "CAREWEAVE_TEMPORAL_UI_PORT": "18233",
            "CAREWEAVE_TASK_QUEUE": "careweave-bench",
        }
        settings = Settings(
            state_dir=Path(state),
            temporal_address="127.0.0.1:17233",
            temporal_ui_port=18233,
            task_queue="careweave-bench",
        )
        temporal = subprocess.Popen(
            dev_server_command(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        gateways: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(100):
                try:
                    await connect(settings)
                    break
                except RuntimeError:
                    await asyncio.sleep(0.3)
            tag = time.strftime("%H%M%S")
            rows = [await bench_bare_temporal(settings, f"T{tag}", args.messages, args.senders)]

            commit_port, floor_port = 12575, 12576
            gateways.append(
                start_gateway(
                    {**env, "CAREWEAVE_MLLP_PORT": str(commit_port)}, Path(state) / "gw1.log"
                )
            )
            gateways.append(
                start_gateway(
                    {
                        **env,
                        "CAREWEAVE_MLLP_PORT": str(floor_port),
                        "CAREWEAVE_MLLP_COMMIT": "false",
                        "CAREWEAVE_DATABASE_URL": f"sqlite:///{state}/floor.db",
                    },
                    Path(state) / "gw2.log",
                )
            )
            await wait_for_port(commit_port)
            await wait_for_port(floor_port)
            rows.append(
                await bench_gateway(
                    "gateway, commit then ACK", commit_port, f"G{tag}", args.messages, args.senders
                )
            )
            rows.append(
                await bench_gateway(
                    "gateway, commit off (parse + ACK)",
                    floor_port,
                    f"F{tag}",
                    args.messages,
                    args.senders,
                )
            )
        finally:
            for process in [*gateways, temporal]:
                process.terminate()
                process.wait(timeout=20)

    print(
        f"\n{args.messages} ORU^R01 messages, {args.senders} concurrent senders, "
        f"{os.cpu_count()} cores\n"
    )
    print("| path | messages | msg/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for figures in rows:
        print(figures.row())
    bare, gateway = rows[0], rows[1]
    ratio = (gateway.messages / gateway.seconds) / (bare.messages / bare.seconds)
    print(f"\ngateway durable-ACK throughput = {ratio:.0%} of bare Temporal signal-with-start")


if __name__ == "__main__":
    asyncio.run(main())
