"""Careweave's own processes as an operator runs them: `python -m workers.cli <command>` in
a process of its own, with a Temporal dev server that a test can stop and start again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from exchanges.registry import REGISTRY
from tests.support.engine import TEST_PAYLOAD_KEYS
from tests.support.fhir_server import free_port
from workers.stack import temporal_binary

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 60


class DevServer:
    """`temporal server start-dev` on a fixed port and a database file, so that a stop
    and a start again give the same server back (the same address, the same state)."""

    def __init__(self, state_dir: Path, *extra_args: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._command = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--headless",
            "--db-filename",
            str(state_dir / "temporal.db"),
            "--log-level",
            "error",
            *REGISTRY.dev_server_args(),
            *extra_args,
        ]
        self._log = state_dir / "temporal.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self._process is None, "already running"
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(self._command, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def kill(self) -> None:
        """SIGKILL: the server ends mid-write, as on a crash; start() brings it back on
        the same database file."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


@contextlib.contextmanager
def dev_server(state_dir: Path) -> Iterator[DevServer]:
    server = DevServer(state_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def careweave_env(state_dir: Path, temporal_address: str, **settings: str) -> dict[str, str]:
    """The environment of a Careweave process on its own state folder; ``settings`` are
    CAREWEAVE_* values by their lower-case setting name."""
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONUNBUFFERED": "1",
        "CAREWEAVE_STATE_DIR": str(state_dir),
        "CAREWEAVE_TEMPORAL_ADDRESS": temporal_address,
        "CAREWEAVE_PAYLOAD_KEYS": TEST_PAYLOAD_KEYS,
    }
    env.update({f"CAREWEAVE_{name.upper()}": value for name, value in settings.items()})
    return env


class CareweaveProcess:
    """One `careweave` command running; its output is read line by line as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_for_line(self, pattern: str, timeout: float = START_SECONDS) -> re.Match[str]:
        """The first output line (read so far or to come) that matches ``pattern``."""
        regex = re.compile(pattern)
        for line in self.lines:
            if found := regex.search(line):
                return found
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while raw := await self.process.stdout.readline():
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if found := regex.search(line):
                    return found
        raise AssertionError(
            f"the process exited with {await self.process.wait()} before printing "
            f"{pattern!r}:\n" + "\n".join(self.lines[-40:])
        )

    async def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signum)
        async with asyncio.timeout(timeout):
            await self.drain()
            return await self.process.wait()

    async def drain(self) -> None:
        """Read the rest of the output (the process can block on a full pipe otherwise)."""
        assert self.process.stdout is not None
        while raw := await self.process.stdout.readline():
            self.lines.append(raw.decode(errors="replace").rstrip())


@contextlib.asynccontextmanager
async def careweave_process(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> AsyncIterator[CareweaveProcess]:
    """`careweave <args>` until the block ends; then SIGTERM, and SIGKILL if it hangs."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workers.cli",
        *args,
        env=env,
        cwd=cwd or PROJECT_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    running = CareweaveProcess(process)
    try:
        yield running
    finally:
        if process.returncode is None:
            try:
                await running.stop(timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()


def free_port_pair() -> int:
    """A port p with p + 10 also free (demo partners serve their control API there)."""
    for _ in range(50):
        port = free_port()
        if port + 10 > 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 10))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def demo_routing(fhir_port: int, primary_care: int, billing: int) -> str:
    """The demo's routing file (config/destinations.toml) with the tests' ports."""
    config = (PROJECT_ROOT / "config" / "destinations.toml").read_text()
    return (
        config.replace("127.0.0.1:8080", f"127.0.0.1:{fhir_port}")
        .replace("port = 2576", f"port = {primary_care}")
        .replace("port = 2577", f"port = {billing}")
    )


def embedded_stack_env(state_dir: Path) -> dict[str, str]:
    """The environment of `careweave up` / `careweave demo` on free ports and its own state
    folder: every part of the stack a child process of its own."""
    fhir_port = free_port()
    routing = state_dir / "destinations.toml"
    state_dir.mkdir(parents=True, exist_ok=True)
    routing.write_text(demo_routing(fhir_port, free_port_pair(), free_port_pair()))
    env = careweave_env(
        state_dir,
        f"127.0.0.1:{free_port()}",
        temporal_ui_port=str(free_port()),
        mllp_port=str(free_port()),
        api_port=str(free_port()),
        fhir_server_port=str(fhir_port),
        fhir_base_url=f"http://127.0.0.1:{fhir_port}/fhir",
        destinations_file=str(routing),
        orthanc_http_port=str(free_port()),
        orthanc_dicom_port=str(free_port()),
    )
    # The stack makes its own key file in its new state folder, as on a fresh machine.
    del env["CAREWEAVE_PAYLOAD_KEYS"]
    return env


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from /proc: Linux)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
