"""The production shape: `careweave worker` processes (two, as docker-compose runs them)
on a PACS at orthanc_url. The first starts the change-feed poller, the second finds it
(one run, not two), and the workers run it: its feed reads against the real Orthanc
complete."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from exchanges.imaging_order import POLLER_WORKFLOW_ID
from tests.support.orthanc import RunningOrthanc
from tests.support.processes import careweave_env, careweave_process

FOLLOWING = r"following the PACS change feed"


async def completed_feed_reads(client: Client) -> int:
    handle = client.get_workflow_handle(POLLER_WORKFLOW_ID)
    reads = 0
    async for event in handle.fetch_history_events():
        reads += event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    return reads


async def test_every_worker_ensures_one_pacs_poller_and_runs_it(
    temporal_client: Client, orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    env = careweave_env(
        tmp_path,
        temporal_client.service_client.config.target_host,
        task_queue="careweave-pacs-workers",
        orthanc_embedded="false",
        orthanc_url=orthanc.base_url,
        orthanc_username=orthanc.username,
        orthanc_password=orthanc.password,
        worklist_dir=str(orthanc.worklist_dir),
        imaging_poll_seconds="0.5",
    )
    poller = temporal_client.get_workflow_handle(POLLER_WORKFLOW_ID)
    try:
        async with careweave_process("worker", env=env) as first:
            await first.wait_for_line(FOLLOWING)
            started = await poller.describe()
            assert started.status == WorkflowExecutionStatus.RUNNING
            async with careweave_process("worker", env=env) as second:
                await second.wait_for_line(FOLLOWING)
                found = await poller.describe()
                assert found.run_id == started.run_id
                count = await temporal_client.count_workflows(
                    f"WorkflowId = '{POLLER_WORKFLOW_ID}' AND ExecutionStatus = 'Running'"
                )
                assert count.count == 1
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while await completed_feed_reads(temporal_client) < 2:
                assert loop.time() < deadline, "no worker ran the poller's feed reads"
                await asyncio.sleep(0.2)
    finally:
        # One poller per namespace: left running, the next engine would find it on a task
        # queue nobody works.
        with contextlib.suppress(RPCError):
            await poller.terminate("test finished")
