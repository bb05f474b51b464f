"""Only Careweave's own processes can address an exchange, on the real dev server.

What a person with network access to the Temporal frontend but without Careweave's keys can
send (`temporal workflow signal/update ...` with a made-up reviewer): plaintext payloads, and
decisions without the API's proof. The worker refuses each, audits it, writes nothing of it
into the exchange's state, and the exchange carries on with the real messages that follow —
also after a worker restart, when the forged signal in the history is replayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.common import HeaderCodecBehavior
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from exchanges.registry import REGISTRY
from models.audit import AuditAction, AuditOutcome
from models.records import AuditRecord
from models.review import ReviewAction, ReviewDecision
from tests.integration.test_order_to_result_e2e import read, send, workflow_id, written
from tests.support.engine import TEST_KEY_RING, Engine, audit_rows, running_engine
from workers import sample_messages as sm
from workers.auth import TokenIssuer, load_or_create_signing_key
from workers.payload_codec import encrypted_data_converter

pytestmark = pytest.mark.integration

TASK_QUEUE = "careweave-forged-input"


@pytest.fixture
async def intruder(temporal_client: Client) -> Client:
    """A client on the same frontend without Careweave's payload key: plaintext JSON."""
    return await Client.connect(
        temporal_client.service_client.config.target_host, data_converter=pydantic_data_converter
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Kept across the engines of one test: a restarted worker finds the rows written before.
    return tmp_path_factory.mktemp("forged-input-state")


@pytest.fixture
async def own_engine(
    temporal_client: Client, fhir_base_url: str, state_dir: Path
) -> AsyncIterator[Engine]:
    async with running_engine(
        temporal_client, fhir_base_url, task_queue=TASK_QUEUE, state_dir=state_dir
    ) as running:
        yield running


def refused_payloads(rows: list[AuditRecord]) -> list[AuditRecord]:
    return [
        row
        for row in rows
        if row.action == AuditAction.DECODE.value and row.outcome == AuditOutcome.REFUSED.value
    ]


def refused_decisions(rows: list[AuditRecord]) -> list[AuditRecord]:
    return [
        row
        for row in rows
        if row.action == AuditAction.REVIEW_DECISION.value
        and row.outcome == AuditOutcome.REFUSED.value
    ]


async def update_events(engine: Engine, exchange: str) -> list[Any]:
    history = await engine.handle(exchange).fetch_history()
    kinds = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
    }
    return [event for event in history.events if event.event_type in kinds]


async def test_plaintext_signal_and_update_are_refused_and_the_exchange_carries_on(
    temporal_client: Client,
    fhir_base_url: str,
    intruder: Client,
    state_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    order = sm.SampleOrder("FRG-2001")
    forged_result = {
        "text": sm.lab_result(order, "FRG-2001-X", [sm.SODIUM]).replace("140", "999"),
        "message_type": "ORU^R01",
        "control_id": "FRG-2001-X",
        "sending_facility": sm.HOSPITAL,
        "received_at": "2026-01-01T00:00:00Z",
    }
    async with running_engine(
        temporal_client, fhir_base_url, task_queue=TASK_QUEUE, state_dir=state_dir
    ) as engine:
        exchange = workflow_id(engine, order)
        assert await send(engine, sm.lab_order(order, "FRG-2001-O")) == ["AA"]
        await engine.wait_for_status(exchange, "ordered")

        await intruder.get_workflow_handle(exchange).signal("result_message", forged_result)
        rows = await audit_rows(engine, exchange, lambda rows: bool(refused_payloads(rows)))
        [signal_row] = refused_payloads(rows)
        assert signal_row.actor == "careweave-worker"
        assert "not encrypted with Careweave's payload key" in signal_row.detail
        assert await engine.handle(exchange).query("status") == "ordered"
        # Logged without the payload's content.
        assert "999" not in caplog.text and "FRG-2001-X" not in caplog.text

        with pytest.raises(WorkflowUpdateFailedError):
            await intruder.get_workflow_handle(exchange).execute_update(
                "decide_review",
                {"review_id": "r1", "action": "approve", "reason": "x", "reviewer": "mallory"},
            )
        rows = await audit_rows(engine, exchange, lambda rows: len(refused_payloads(rows)) == 2)
        assert len(refused_payloads(rows)) == 2
        assert await update_events(engine, exchange) == []

    # A restarted worker replays the history with the forged signal in it: the exchange is
    # not stuck, the forged signal still changes nothing, and it is not audited twice.
    async with running_engine(
        temporal_client, fhir_base_url, task_queue=TASK_QUEUE, state_dir=state_dir
    ) as restarted:
        assert await send(restarted, sm.lab_result(order, "FRG-2001-R", [sm.SODIUM])) == ["AA"]
        await restarted.wait_for_status(exchange, "final", timeout=60)
        [report_ref] = sorted(set(await written(restarted, order, "DiagnosticReport")))
        report = await read(restarted, report_ref)
        [observation] = [await read(restarted, ref["reference"]) for ref in report["result"]]
        assert observation["valueQuantity"]["value"] == 140
        rows = restarted.store.audit_log().records(exchange=exchange)
        assert len(refused_payloads(rows)) == 2, [row.detail for row in refused_payloads(rows)]

    # The history, forged signal included, replays with Careweave's strict converter.
    history = await temporal_client.get_workflow_handle(exchange).fetch_history()
    replayer = Replayer(
        workflows=REGISTRY.workflows(),
        data_converter=encrypted_data_converter(TEST_KEY_RING),
        header_codec_behavior=HeaderCodecBehavior.CODEC,
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_a_plaintext_workflow_input_fails_that_workflow_only(
    own_engine: Engine, intruder: Client
) -> None:
    forged = await intruder.start_workflow(
        "OrderToResult",
        {"placer_order_number": "FRG-2002"},
        id="order-to-result/FORGED/FRG-2002",
        task_queue=TASK_QUEUE,
        execution_timeout=timedelta(minutes=5),
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await own_engine.handle(forged.id).result()
    assert "payload refused: not encrypted" in str(failed.value.cause)
    rows = await audit_rows(own_engine, forged.id, lambda rows: bool(refused_payloads(rows)))
    assert len(refused_payloads(rows)) == 1


async def test_decisions_without_a_valid_proof_are_refused_before_history(
    own_engine: Engine,
) -> None:
    engine = own_engine
    order = sm.SampleOrder("FRG-2003", local_code="ZZX9", text="Experimental")
    exchange = workflow_id(engine, order)
    await send(
        engine,
        sm.lab_order(order, "FRG-2003-O"),
        sm.lab_result(order, "FRG-2003-R", [sm.UNMAPPED]),
    )
    pending = await engine.wait_for_review(exchange)
    review_id = str(pending["review_id"])
    genuine = ReviewDecision(
        review_id=review_id,
        action=ReviewAction.APPROVE,
        reason="local code checked with the lab",
        reviewer="rev-1",
    )
    api_key = load_or_create_signing_key(engine.settings.resolved_signing_key_file)
    impostor = load_or_create_signing_key(engine.settings.state_dir / "impostor.pem")

    def signer(key: Any, proof_seconds: int = 120) -> TokenIssuer:
        return TokenIssuer(
            key,
            issuer=engine.settings.auth_issuer,
            audience=engine.settings.auth_audience,
            ttl=timedelta(hours=1),
            decision_proof_ttl=timedelta(seconds=proof_seconds),
        )

    other_review = signer(api_key).prove_decision(
        genuine.model_copy(update={"review_id": "r7"}), workflow_id=exchange
    )
    forgeries = [
        (genuine, "carries no proof"),
        (signer(impostor).prove_decision(genuine, workflow_id=exchange), "not signed by a key"),
        (
            signer(api_key).prove_decision(genuine, workflow_id=f"{exchange}-other"),
            "for another exchange",
        ),
        (other_review.model_copy(update={"review_id": review_id}), "for another review"),
        (
            engine.signed(exchange, genuine).model_copy(update={"reason": "trust me"}),
            "reason or edited message",
        ),
        (
            engine.signed(exchange, genuine).model_copy(update={"reviewer": "chief"}),
            "reviewer",
        ),
        (
            signer(api_key, proof_seconds=-120).prove_decision(genuine, workflow_id=exchange),
            "expired",
        ),
    ]
    for forged, refused_because in forgeries:
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await engine.handle(exchange).execute_update("decide_review", forged)
        assert refused_because in str(refused.value.cause), refused.value.cause
        assert "decision refused" in str(refused.value.cause)

    assert await update_events(engine, exchange) == []
    assert (await engine.handle(exchange).query("pending_review"))["review_id"] == review_id
    assert await engine.handle(exchange).query("review_history") == []
    rows = await audit_rows(
        engine, exchange, lambda rows: len(refused_decisions(rows)) >= len(forgeries)
    )
    refusals = refused_decisions(rows)
    assert len(refusals) == len(forgeries)
    assert all(row.actor == "careweave-worker" for row in refusals)
    assert "claimed by 'chief'" in refusals[5].detail

    # The genuine decision, signed as the API signs it, still goes through.
    await engine.decide_review(exchange, genuine)
    await engine.wait_for_status(exchange, "final")
    [record] = await engine.handle(exchange).query("review_history")
    assert record["decision"]["reviewer"] == "rev-1"
    assert len(await update_events(engine, exchange)) == 2
