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
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient
from adapters.payload_crypto import add_key
from exchanges import order_to_result
from exchanges.commit import ExchangeCommitter
from exchanges.sdk import Route
from models.messages import InboundMessage
from models.settings import Settings
from workers import sample_messages as sm
from workers.payload_codec import load_payload_keys
from workers.stack import dev_server_command
from workers.temporal_client import connect
from workflows.order_to_result import OrderToResult


@dataclass
class Figures:
    name: str
    messages: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    # CPU milliseconds per message spent by each process during the run (Linux /proc).
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

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


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


async def _drive(
    name: str,
    total: int,
    senders: int,
    send_one: Callable[[int], Awaitable[bool]],
    pids: dict[str, int],
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

    pids = {**pids, "bench (senders)": os.getpid()}
    cpu_before = cpu_snapshot(pids)
    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    seconds = time.perf_counter() - started
    cpu_after = cpu_snapshot(pids)
    cpu_ms = {key: (cpu_after[key] - cpu_before[key]) * 1000 / total for key in pids}
    return Figures(name, total, seconds, latencies, errors, cpu_ms)


async def bench_gateway(
    name: str, port: int, tag: str, total: int, senders: int, pids: dict[str, int]
) -> Figures:
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
        return await _drive(name, total, senders, send_one, pids)
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)


async def bench_bare_temporal(
    settings: Settings, tag: str, total: int, senders: int, pids: dict[str, int]
) -> Figures:
    client = await connect(settings)
    committer = ExchangeCommitter(client, settings)

    async def send_one(index: int) -> bool:
        text = result_message(tag, index)
        route = Route(
            exchange=order_to_result.EXCHANGE.name,
            workflow_id=f"order-to-result/BENCH/{tag}{index:06d}",
            signal=OrderToResult.result_message,
            facility="BENCH",
            key=order_to_result.OrderKey(
                facility="BENCH", placer_order_number=f"{tag}{index:06d}", placer_namespace=""
            ),
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

    return await _drive("bare Temporal signal-with-start", total, senders, send_one, pids)


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


@contextlib.asynccontextmanager
async def fresh_temporal(
    state: Path,
) -> AsyncIterator[tuple[Settings, dict[str, str], int]]:
    """A new file-backed dev server per measurement, so no path inherits a fuller database."""
    env = {
        **os.environ,
        "CAREWEAVE_STATE_DIR": str(state),
        "CAREWEAVE_TEMPORAL_ADDRESS": "127.0.0.1:17233",
        "CAREWEAVE_TEMPORAL_UI_PORT": "18233",
        "CAREWEAVE_TASK_QUEUE": "careweave-bench",
        "CAREWEAVE_DATABASE_URL": f"sqlite:///{state}/careweave.db",
    }
    settings = Settings(
        state_dir=state,
        temporal_address="127.0.0.1:17233",
        temporal_ui_port=18233,
        task_queue="careweave-bench",
    )
    # Payloads are encrypted as in production; the gateway process finds this key file.
    key_ring = load_payload_keys(settings, create_if_new_state=True)
    temporal = subprocess.Popen(
        dev_server_command(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            try:
                await connect(settings, key_ring)
                break
            except RuntimeError:
                await asyncio.sleep(0.3)
        yield settings, env, temporal.pid
    finally:
        temporal.terminate()
        temporal.wait(timeout=30)


@contextlib.asynccontextmanager
async def gateway_process(env: dict[str, str], port: int, log: Path) -> AsyncIterator[int]:
    """The gateway as its own process (as in production); yields its pid."""
    process = start_gateway({**env, "CAREWEAVE_MLLP_PORT": str(port)}, log)
    try:
        await wait_for_port(port)
        yield process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


async def one_round(base: Path, index: int, messages: int, senders: int) -> list[Figures]:
    tag = f"{time.strftime('%H%M%S')}{index}"
    rows: list[Figures] = []
    async with fresh_temporal(base / f"bare{index}") as (settings, _env, temporal):
        pids = {"Temporal server": temporal}
        rows.append(await bench_bare_temporal(settings, f"T{tag}", messages, senders, pids))
    async with (
        fresh_temporal(base / f"gateway{index}") as (_settings, env, temporal),
        gateway_process(env, 12575, base / f"gateway{index}.log") as gateway,
    ):
        pids = {"Temporal server": temporal, "gateway": gateway}
        rows.append(await bench_gateway(GATEWAY, 12575, f"G{tag}", messages, senders, pids))
    floor_env = {**os.environ, "CAREWEAVE_MLLP_COMMIT": "false"}
    floor_env["CAREWEAVE_DATABASE_URL"] = f"sqlite:///{base}/floor{index}.db"
    floor_env["CAREWEAVE_STATE_DIR"] = str(base / f"floor{index}")
    add_key(base / f"floor{index}" / "payload.keys")
    async with gateway_process(floor_env, 12576, base / f"floor{index}.log") as gateway:
        pids = {"gateway": gateway}
        rows.append(await bench_gateway(FLOOR, 12576, f"F{tag}", messages, senders, pids))
    return rows


GATEWAY = "gateway, commit then ACK"
FLOOR = "gateway, commit off (parse + ACK)"


def median_of(rounds: list[list[Figures]], position: int) -> Figures:
    """The round with the median throughput for one path (latencies from that round)."""
    runs = sorted((row[position] for row in rounds), key=lambda f: f.messages / f.seconds)
    return runs[len(runs) // 2]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rounds: list[list[Figures]] = []
    with tempfile.TemporaryDirectory(prefix="careweave-bench-") as state:
        for index in range(args.rounds):
            rounds.append(await one_round(Path(state), index, args.messages, args.senders))
            bare, gateway = rounds[-1][0], rounds[-1][1]
            print(
                f"round {index + 1}: bare {bare.rate:.0f}/s, gateway {gateway.rate:.0f}/s "
                f"({gateway.rate / bare.rate:.0%})",
                flush=True,
            )

    print(
        f"\n{args.messages} ORU^R01 messages per path and round, {args.senders} concurrent "
        f"senders, {os.cpu_count()} cores, median of {args.rounds} rounds "
        "(each path on a fresh file-backed dev server)\n"
    )
    print("| path | messages | msg/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    rows = [median_of(rounds, position) for position in range(3)]
    for figures in rows:
        print(figures.row())
    print("\nCPU milliseconds per message, by process (same median rounds):\n")
    names = ["Temporal server", "gateway", "bench (senders)"]
    print("| path | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for figures in rows:
        cells = [f"{figures.cpu_ms[n]:.2f}" if n in figures.cpu_ms else "-" for n in names]
        print(f"| {figures.name} | " + " | ".join(cells) + " |")
    ratio = rows[1].rate / rows[0].rate
    print(f"\ngateway durable-ACK throughput = {ratio:.0%} of bare Temporal signal-with-start")


if __name__ == "__main__":
    asyncio.run(main())
