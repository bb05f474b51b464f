"""Run `careweave` as an operator would: a separate process pointed at the test engine."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from temporalio.client import Client

from tests.support.engine import Engine

CAREWEAVE = Path(sys.executable).parent / "careweave"


def careweave_environment(
    engine: Engine, client: Client, env: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a `careweave` process pointed at the test engine."""
    return {
        **os.environ,
        "CAREWEAVE_TEMPORAL_ADDRESS": client.service_client.config.target_host,
        "CAREWEAVE_TASK_QUEUE": engine.settings.task_queue,
        "CAREWEAVE_DATABASE_URL": engine.settings.resolved_database_url,
        "CAREWEAVE_STATE_DIR": str(engine.settings.state_dir),
        **(env or {}),
    }


async def careweave(
    engine: Engine,
    client: Client,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Exit code and combined output of one `careweave` command."""
    process = await asyncio.create_subprocess_exec(
        str(CAREWEAVE),
        *args,
        env=careweave_environment(engine, client, env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(
        process.communicate(stdin.encode() if stdin is not None else None), 120
    )
    assert process.returncode is not None
    return process.returncode, output.decode()
