"""The bare-Temporal baseline of bench/e2e.py: workflows with the durable steps of Careweave's
exchanges and no-op activities, so the dev server's ceiling for that many steps per message
can be measured beside the real thing.

Per message, the steps mirror what an exchange needs at the least. With ``local_steps``
(the steps today's code takes) the writes, hand-offs and deliveries are local activities;
without, activities (the steps of the code before `lab-writes-local-first` and
`delivery-local-first`):
- lab order: signal-with-start, a local activity (parse + map), and the FHIR write;
- lab result: a signal to the same workflow, a local activity, the write;
- discharge: signal-with-start, a local activity, the step that signal-with-starts the
  patient's delivery queue, and in the queue the delivery.

    python bench/bare_workflows.py --address 127.0.0.1:7233 --task-queue bare
runs the worker (a process of its own, like `careweave worker`).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

STEP_TIMEOUT = timedelta(seconds=60)


@dataclass
class BareMessage:
    kind: str  # "order", "result" or "discharge"
    text: str


@dataclass
class QueueRequest:
    workflow_id: str
    text: str
    local_steps: bool


@activity.defn
def bare_parse(message: BareMessage) -> str:
    return message.kind


@activity.defn
async def bare_write(message: BareMessage) -> str:
    return message.kind


@activity.defn
async def bare_enqueue(request: QueueRequest) -> str:
    client = activity.client()
    await client.start_workflow(
        BareQueue.run,
        request.local_steps,
        id=request.workflow_id,
        task_queue=activity.info().task_queue,
        start_signal="enqueue",
        start_signal_args=[BareMessage("delivery", request.text)],
    )
    return request.workflow_id


async def step(activity_fn: Callable[[Any], Awaitable[str]], arg: Any, *, local: bool) -> str:
    """One durable step: a local activity (a marker in the workflow task) or an activity."""
    if local:
        return await workflow.execute_local_activity(
            activity_fn, arg, start_to_close_timeout=STEP_TIMEOUT
        )
    return await workflow.execute_activity(activity_fn, arg, start_to_close_timeout=STEP_TIMEOUT)


@workflow.defn
class BareOrder:
    """Order then result, each a local activity and a write; completes after both."""

    def __init__(self) -> None:
        self._inbox: deque[BareMessage] = deque()

    @workflow.run
    async def run(self, local_steps: bool) -> int:
        handled = 0
        while handled < 2:
            await workflow.wait_condition(lambda: bool(self._inbox))
            message = self._inbox.popleft()
            await workflow.execute_local_activity(
                bare_parse, message, start_to_close_timeout=STEP_TIMEOUT
            )
            await step(bare_write, message, local=local_steps)
            handled += 1
        return handled

    @workflow.signal
    def message(self, message: BareMessage) -> None:
        self._inbox.append(message)


@workflow.defn
class BareDischarge:
    def __init__(self) -> None:
        self._inbox: deque[BareMessage] = deque()

    @workflow.run
    async def run(self, local_steps: bool) -> None:
        await workflow.wait_condition(lambda: bool(self._inbox))
        message = self._inbox.popleft()
        await workflow.execute_local_activity(
            bare_parse, message, start_to_close_timeout=STEP_TIMEOUT
        )
        request = QueueRequest(
            f"bare-queue/{workflow.info().workflow_id}", message.text, local_steps
        )
        await step(bare_enqueue, request, local=local_steps)

    @workflow.signal
    def message(self, message: BareMessage) -> None:
        self._inbox.append(message)


@workflow.defn
class BareQueue:
    def __init__(self) -> None:
        self._queue: deque[BareMessage] = deque()

    @workflow.run
    async def run(self, local_steps: bool) -> None:
        await workflow.wait_condition(lambda: bool(self._queue))
        await step(bare_write, self._queue.popleft(), local=local_steps)

    @workflow.signal
    def enqueue(self, message: BareMessage) -> None:
        self._queue.append(message)


async def run_worker(address: str, task_queue: str) -> None:
    # Imported here, not at the top: this module is re-imported in every workflow's sandbox.
    from models.settings import Settings

    client = await Client.connect(address)
    defaults = Settings()
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[BareOrder, BareDischarge, BareQueue],
        activities=[bare_parse, bare_write, bare_enqueue],
        activity_executor=concurrent.futures.ThreadPoolExecutor(8),
        # Sized as `careweave worker` is by default, so both meet the same limits.
        max_concurrent_workflow_tasks=defaults.worker_max_concurrent_workflow_tasks,
        max_concurrent_activities=defaults.worker_max_concurrent_activities,
        max_concurrent_local_activities=defaults.worker_max_concurrent_local_activities,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with worker:
        print("bare worker running", flush=True)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    arguments = parser.parse_args()
    asyncio.run(run_worker(arguments.address, arguments.task_queue))
