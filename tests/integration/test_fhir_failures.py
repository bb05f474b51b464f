"""What an exchange does when the FHIR server fails: a refusal (4xx) is not retried but
goes to a reviewer; an unreachable server is retried with backoff until it is back,
and the write then lands once. A write is tried first as a local activity, then retried
as an activity. Real servers only: a 4xx comes from the project's FHIR
server addressed at a base path it does not serve; "down" is a port nothing listens on
until the server is started there."""

from __future__ import annotations

import asyncio
import contextlib

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from models.review import ReviewAction, ReviewDecision
from tests.support.engine import Engine, mllp_send, running_engine
from tests.support.fhir_server import free_port, running_fhir_server
from tests.support.history import local_attempts
from workers import sample_messages as sm


def workflow_id(engine: Engine, order: sm.SampleOrder) -> str:
    return engine.lab_workflow_id(order.placer_order_number)


async def activity_attempts(engine: Engine, wf_id: str) -> int:
    description = await engine.handle(wf_id).describe()
    pending = description.raw_description.pending_activities
    return max((activity.attempt for activity in pending), default=0)


async def test_fhir_refusal_goes_to_review_without_retrying(
    temporal_client: Client, fhir_base_url: str
) -> None:
    wrong_base = fhir_base_url.removesuffix("/fhir") + "/not-fhir"
    async with running_engine(
        temporal_client, wrong_base, task_queue="careweave-test-refusing"
    ) as engine:
        order = sm.SampleOrder("FAIL-3001")
        await mllp_send(engine.mllp_port, [sm.lab_order(order, "FAIL-3001-O")])
        pending = await engine.wait_for_review(workflow_id(engine, order))
        assert pending["reason"] == "fhir-rejected"
        assert "404" in str(pending["summary"])

        history = await engine.handle(workflow_id(engine, order)).fetch_history()
        writes = local_attempts(history, "publish_service_request")
        assert [failed for _, failed in writes] == [True]  # tried once, in the workflow task
        assert [attempt for attempt, _ in writes] == [1]
        scheduled = [
            event
            for event in history.events
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        assert scheduled == []  # a refusal is not handed on to the retried activity

        await engine.decide_review(
            workflow_id(engine, order),
            ReviewDecision(
                review_id=str(pending["review_id"]),
                action=ReviewAction.REJECT,
                reason="wrong endpoint configured; order re-entered by hand",
                reviewer="ops1",
            ),
        )
        await engine.wait_for_status(workflow_id(engine, order), "write-rejected")


async def test_unreachable_fhir_is_retried_until_it_is_back(temporal_client: Client) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/fhir"
    async with running_engine(
        temporal_client, base_url, task_queue="careweave-test-down"
    ) as engine:
        order = sm.SampleOrder("FAIL-3002")
        await mllp_send(engine.mllp_port, [sm.lab_order(order, "FAIL-3002-O")])
        for _ in range(100):
            if await activity_attempts(engine, workflow_id(engine, order)) >= 2:
                break
            await asyncio.sleep(0.2)
        assert await activity_attempts(engine, workflow_id(engine, order)) >= 2
        assert await engine.handle(workflow_id(engine, order)).query("pending_review") is None

        with contextlib.ExitStack() as stack:
            await asyncio.to_thread(stack.enter_context, running_fhir_server(port))
            await engine.wait_for_status(workflow_id(engine, order), "ordered", timeout=60)
            refs: list[str] = await engine.handle(workflow_id(engine, order)).query(
                "resources_written"
            )
            [ref] = {ref for ref in refs if ref.startswith("ServiceRequest/")}
            request = await engine.fhir.read(*ref.split("/"))
            placer = request["identifier"][0]
            found = await engine.fhir.search(
                "ServiceRequest", {"identifier": f"{placer['system']}|{placer['value']}"}
            )
            assert [resource["id"] for resource in found] == [request["id"]]
