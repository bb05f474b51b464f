"""Exchanges queried while their local activities run still replay.

With temporalio 1.35, a patch marker recorded after a local activity in the same workflow
task lands out of its place when a query reaches the worker while that activity runs, and
the history then fails to replay (non-determinism) on the next worker that picks the run up.
Operators, the review inbox and the API query running exchanges at any time, so a run of
a workflow with local activities records one marker at its start that stands for every
earlier patch (workflows/patches.py). Here queries hammer a dozen lab exchanges (parse
and FHIR writes are local activities) and a dozen discharges (parse, routing, hand-over
to the queues) while their messages go through, then each history is replayed with
Careweave's data converter, as tests/replay replays the recorded ones: with patches
asked where they apply, several of them fail.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from tests.histories.record import decoded_history
from tests.replay.test_histories import replayer
from tests.support.discharge import discharge_id, send, stay
from tests.support.engine import Engine, mllp_send
from workers import sample_messages as sm

EXCHANGES = 12


async def keep_querying(engine: Engine, workflow_id: str, query: str, stop: asyncio.Event) -> int:
    answered = 0
    while not stop.is_set():
        # Not started yet, or a query the worker could not answer: the replay below is the
        # check, this only keeps queries arriving.
        with contextlib.suppress(RPCError, WorkflowQueryFailedError):
            await engine.handle(workflow_id).query(query)
            answered += 1
        await asyncio.sleep(0.002)
    return answered


async def run_while_queried(
    engine: Engine, ids: list[str], query: str, traffic: Callable[[], Awaitable[None]]
) -> None:
    """``traffic`` runs while every exchange in ``ids`` is queried; then each history must
    replay."""
    stop = asyncio.Event()
    queries = [asyncio.create_task(keep_querying(engine, wid, query, stop)) for wid in ids]
    try:
        await traffic()
    finally:
        stop.set()
        answered = await asyncio.gather(*queries)
    assert min(answered) > 0  # queries did reach every exchange while it ran
    failed = []
    for wid in ids:
        history = await decoded_history(engine.client, wid)
        result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is not None:
            failed.append(f"{wid}: {result.replay_failure}")
    assert failed == []


async def test_lab_exchanges_replay_after_queries_during_local_activities(engine: Engine) -> None:
    orders = [sm.SampleOrder(f"QRY-{index:03d}") for index in range(EXCHANGES)]
    ids = [engine.lab_workflow_id(order.placer_order_number) for order in orders]

    async def traffic() -> None:
        await asyncio.gather(
            *(
                mllp_send(
                    engine.mllp_port,
                    [
                        sm.lab_order(order, f"{order.placer_order_number}-O"),
                        sm.lab_result(order, f"{order.placer_order_number}-R", [sm.SODIUM]),
                    ],
                )
                for order in orders
            )
        )
        for wid in ids:
            await engine.wait_for_status(wid, "final", timeout=60)

    await run_while_queried(engine, ids, "status", traffic)


async def test_discharges_replay_after_queries_during_local_activities(
    discharge_engine: Engine,
) -> None:
    engine = discharge_engine
    visits = [f"V-QRY-{index:03d}" for index in range(EXCHANGES)]
    ids = [discharge_id(visit) for visit in visits]

    async def routed(wid: str) -> None:
        for _ in range(300):
            with contextlib.suppress(RPCError, WorkflowQueryFailedError):
                if await engine.handle(wid).query("routed_events"):
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{wid}: not routed in 30 s")

    async def traffic() -> None:
        await asyncio.gather(
            *(
                send(engine, sm.adt_event(stay(visit, f"MRN-{visit}"), f"{visit}-1", "A03"))
                for visit in visits
            )
        )
        await asyncio.gather(*(routed(wid) for wid in ids))

    await run_while_queried(engine, ids, "routed_events", traffic)
