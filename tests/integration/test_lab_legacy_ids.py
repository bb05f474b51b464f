"""Lab exchanges started before their ids became pseudonyms (order-to-result/<facility>/
<placer number in clear>) still get their later messages, on the real dev server."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from temporalio.service import RPCError

from adapters.hl7v2.header import DecodedMessage, decode_message
from exchanges.commit import ExchangeCommitter
from exchanges.order_to_result import legacy_lab_workflow_id
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS
from models.search import BusinessKeys
from tests.support.engine import Engine
from workers import sample_messages as sm
from workers.intake import MessageIntake, inbound_message


def decoded(text: str) -> DecodedMessage:
    return decode_message(
        text.encode(),
        supported_types=REGISTRY.supported_types,
        supported_versions=SUPPORTED_VERSIONS,
        required_segments=REGISTRY.required_segments,
    )


async def start_as_before(engine: Engine, order: sm.SampleOrder) -> str:
    """The order committed as the gateway at 610caf4 did: signal-with-start
    under the clear-text id, no business keys."""
    message = decoded(sm.lab_order(order, f"{order.placer_order_number}-O"))
    route = REGISTRY.route(message, pseudonym_key=engine.settings.resolved_pseudonym_key())
    legacy_id = legacy_lab_workflow_id(sm.HOSPITAL, order.placer_order_number)
    old_route = dataclasses.replace(
        route, workflow_id=legacy_id, legacy_workflow_id=None, business_keys=BusinessKeys()
    )
    committer = ExchangeCommitter(engine.client, engine.settings)
    assert await committer.commit(old_route, inbound_message(message, old_route)) == legacy_id
    await engine.wait_for_status(legacy_id, "ordered")
    return legacy_id


async def visible(engine: Engine, workflow_id: str) -> None:
    """Visibility is eventually consistent: wait until a listing shows the run."""
    for _ in range(100):
        if (await engine.client.count_workflows(f"WorkflowId = '{workflow_id}'")).count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} never showed in visibility")


async def test_a_result_reaches_the_exchange_its_order_started_under_the_old_id(
    engine: Engine,
) -> None:
    order = sm.SampleOrder(f"LEGACY-{uuid.uuid4().hex[:6]}")
    legacy_id = await start_as_before(engine, order)
    await visible(engine, legacy_id)

    # A gateway started after the upgrade, with the old run open: its intake, as
    # `careweave gateway` builds it, takes the result.
    intake = MessageIntake(
        engine.store,
        ExchangeCommitter(engine.client, engine.settings),
        pseudonym_key=engine.settings.resolved_pseudonym_key(),
    )
    result = sm.lab_result(order, f"{order.placer_order_number}-R", [sm.SODIUM])
    answer = await intake.accept(result.encode(), peer="127.0.0.1")
    assert answer.ack_code == "AA"
    assert answer.workflow_id == legacy_id
    await engine.wait_for_status(legacy_id, "final")
    with pytest.raises(RPCError):
        await engine.handle(engine.lab_workflow_id(order.placer_order_number)).describe()
    receipt = engine.store.receipt(sm.LAB, f"{order.placer_order_number}-R")
    assert receipt is not None
    assert receipt.workflow_id == legacy_id


async def test_legacy_runs_started_after_the_snapshot_are_seen_at_its_refresh(
    engine: Engine,
) -> None:
    """During a rolling upgrade an older gateway may still start runs under legacy ids."""
    quick = engine.settings.model_copy(update={"legacy_workflow_ids_refresh_seconds": 1})
    committer = ExchangeCommitter(engine.client, quick)
    early = sm.SampleOrder(f"LEGACY-{uuid.uuid4().hex[:6]}")
    first = decoded(sm.lab_order(early, f"{early.placer_order_number}-O"))
    route = REGISTRY.route(first, pseudonym_key=quick.resolved_pseudonym_key())
    assert await committer.commit(route, inbound_message(first, route)) == route.workflow_id

    order = sm.SampleOrder(f"LEGACY-{uuid.uuid4().hex[:6]}")
    legacy_id = await start_as_before(engine, order)
    await visible(engine, legacy_id)
    await asyncio.sleep(1.2)
    result = decoded(sm.lab_result(order, f"{order.placer_order_number}-R", [sm.SODIUM]))
    result_route = REGISTRY.route(result, pseudonym_key=quick.resolved_pseudonym_key())
    reached = await committer.commit(result_route, inbound_message(result, result_route))
    assert reached == legacy_id
    await engine.wait_for_status(legacy_id, "final")


async def test_with_the_legacy_lookup_off_or_the_old_run_closed_the_pseudonymous_id_is_used(
    engine: Engine,
) -> None:
    order = sm.SampleOrder(f"LEGACY-{uuid.uuid4().hex[:6]}")
    legacy_id = await start_as_before(engine, order)
    result = decoded(sm.lab_result(order, f"{order.placer_order_number}-R", [sm.SODIUM]))
    route = REGISTRY.route(result, pseudonym_key=engine.settings.resolved_pseudonym_key())
    assert route.legacy_workflow_id == legacy_id

    switched_off = engine.settings.model_copy(update={"legacy_lab_workflow_ids": False})
    reached = await ExchangeCommitter(engine.client, switched_off).commit(
        route, inbound_message(result, route)
    )
    assert reached == route.workflow_id == engine.lab_workflow_id(order.placer_order_number)

    # A closed run under the old id is not signalled (Temporal answers NOT_FOUND).
    await engine.handle(legacy_id).terminate(reason="test: the old run is over")
    again = dataclasses.replace(route)
    reached = await ExchangeCommitter(engine.client, engine.settings).commit(
        again, inbound_message(result, again).model_copy(update={"control_id": "other"})
    )
    assert reached == route.workflow_id
