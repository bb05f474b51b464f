"""`careweave up` and `careweave demo` under a supervisor: SIGTERM (systemd, Kubernetes,
`docker stop`) and SIGINT stop every child the stack started (Temporal dev server, FHIR
server, partner systems; each in a process group of its own, which no signal to the
parent reaches) and the process exits."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.support.processes import (
    CareweaveProcess,
    careweave_process,
    child_pids,
    embedded_stack_env,
    process_group_alive,
)

# Temporal dev server, FHIR server and the two partner systems of the demo routing.
STACK_CHILDREN = 4


async def started_children(careweave: CareweaveProcess) -> dict[int, int]:
    """pid -> process group of each child the stack started, once all have started."""
    async with asyncio.timeout(120):
        while len(children := child_pids(careweave.pid)) < STACK_CHILDREN:
            assert careweave.process.returncode is None, "\n".join(careweave.lines[-40:])
            await asyncio.sleep(0.2)
    groups = {pid: os.getpgid(pid) for pid in children}
    # Each in its own group, not ours: a signal to careweave's group would not reach them.
    assert os.getpgid(careweave.pid) not in groups.values()
    return groups


def assert_all_stopped(children: dict[int, int]) -> None:
    left = {pid for pid in children if Path(f"/proc/{pid}").exists()}
    groups_left = {group for group in children.values() if process_group_alive(group)}
    for group in groups_left:  # not left behind for the next tests either way
        os.killpg(group, signal.SIGKILL)
    assert not left and not groups_left, f"left running: pids {left}, process groups {groups_left}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_up_stops_every_child_and_exits(tmp_path: Path, signum: signal.Signals) -> None:
    async with careweave_process("up", env=embedded_stack_env(tmp_path / "state")) as up:
        await up.wait_for_line("Press Ctrl-C to stop", timeout=180)
        children = await started_children(up)
        exit_code = await up.stop(signum, timeout=90)
    assert exit_code == 0, "\n".join(up.lines[-40:])
    assert any("every part of the stack has been shut down" in line for line in up.lines)
    assert_all_stopped(children)


async def test_demo_stopped_during_its_feed_stops_every_child(tmp_path: Path) -> None:
    # Kept running after the feed, as from a terminal; stopped before the feed is through.
    env = embedded_stack_env(tmp_path / "state")
    async with careweave_process("demo", "--keep-running", env=env) as demo:
        children = await started_children(demo)
        exit_code = await demo.stop(signal.SIGTERM, timeout=90)
    assert exit_code == 0, "\n".join(demo.lines[-40:])
    assert_all_stopped(children)


async def test_demo_without_a_terminal_exits_after_the_feed(tmp_path: Path) -> None:
    # As `make demo` in CI or with its input redirected: stdin is not a terminal.
    env = embedded_stack_env(tmp_path / "state")
    async with careweave_process("demo", env=env) as demo:
        children = await started_children(demo)
        async with asyncio.timeout(300):
            await demo.drain()
            exit_code = await demo.process.wait()
    assert exit_code == 0, "\n".join(demo.lines[-40:])
    assert any("discharge (ADT^A03)" in line for line in demo.lines)
    assert not any("keeps running" in line for line in demo.lines)
    assert_all_stopped(children)
