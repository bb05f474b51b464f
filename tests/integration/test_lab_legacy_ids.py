"""Lab exchanges started before their ids became pseudonyms (order-to-result/<facility>/
<placer number in clear>) still get their later messages, on the real dev server."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from temporalio.service import RPCError

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.header import DecodedMessage, decode_message
from exchanges.commit import ExchangeCommitter
from exchanges.order_to_result import legacy_lab_workflow_id
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS
from models.search import BusinessKeys
from tests.support.engine import Engine, mllp_send
from workers import sample_messages as sm
from workers.intake import inbound_message


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


async def test_a_result_reaches_the_exchange_its_order_started_under_the_old_id(
    engine: Engine,
) -> None:
    order = sm.SampleOrder(f"LEGACY-{uuid.uuid4().hex[:6]}")
    legacy_id = await start_as_before(engine, order)

    [ack] = await mllp_send(
        engine.mllp_port, [sm.lab_result(order, f"{order.placer_order_number}-R", [sm.SODIUM])]
    )
    assert parse_ack(ack)[0] == "AA"
    await engine.wait_for_status(legacy_id, "final")
    with pytest.raises(RPCError):
        await engine.handle(engine.lab_workflow_id(order.placer_order_number)).describe()
    receipt = engine.store.receipt(sm.LAB, f"{order.placer_order_number}-R")
    assert receipt is not None
    assert receipt.workflow_id == legacy_id


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
