"""The operator's commands, run as a person would run them (a `careweave` process)
against the session's real Temporal dev server and the engine's database."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client

from adapters.hl7v2.ack import parse_ack
from tests.support.cli import careweave
from tests.support.engine import Engine, mllp_send
from workers import sample_messages as sm


async def test_reviewer_lists_and_approves_from_the_command_line(
    engine: Engine, temporal_client: Client
) -> None:
    order = sm.SampleOrder("CLI-4001", local_code="ZZX9", text="Experimental")
    workflow_id = f"order-to-result/{sm.HOSPITAL}/CLI-4001"
    await mllp_send(
        engine.mllp_port,
        [sm.lab_order(order, "CLI-4001-O"), sm.lab_result(order, "CLI-4001-R", [sm.UNMAPPED])],
    )
    await engine.wait_for_review(workflow_id)

    code, output = await careweave(engine, temporal_client, "review", "list")
    assert code == 0, output
    assert workflow_id in output
    assert "unmapped-code" in output

    code, output = await careweave(
        engine,
        temporal_client,
        *("review", "approve", workflow_id),
        *("--reason", "local code checked with the lab", "--reviewer", "rev-cli"),
    )
    assert code == 0, output
    await engine.wait_for_status(workflow_id, "final")
    history = await engine.handle(workflow_id).query("review_history")
    assert history[-1]["decision"]["reviewer"] == "rev-cli"
    [decided] = [
        row
        for row in engine.store.audit_log().records(exchange=workflow_id)
        if row.action == "review-decision"
    ]
    assert (decided.actor, decided.outcome, decided.detail) == ("rev-cli", "success", "approve")

    code, output = await careweave(
        engine, temporal_client, "review", "reject", workflow_id, "--reason", "twice"
    )
    assert code == 1
    assert "no pending review" in output


async def test_operator_fixes_and_releases_from_the_command_line(
    engine: Engine, temporal_client: Client, tmp_path: Path
) -> None:
    good = sm.lab_order(sm.SampleOrder("CLI-4002"), "CLI-4002-O")
    [ack] = await mllp_send(engine.mllp_port, [good.replace("\rORC|", "\rXRC|", 1)])
    assert parse_ack(ack)[0] == "AE"
    held_id = engine.store.quarantined(limit=1)[0].id
    assert held_id is not None

    code, output = await careweave(engine, temporal_client, "quarantine", "list")
    assert code == 0, output
    assert "CLI-4002-O" in output
    assert "Testpatient" not in output  # the list shows codes and reasons, no content

    code, output = await careweave(engine, temporal_client, "quarantine", "show", str(held_id))
    assert code == 0, output
    assert "XRC|" in output  # the kept bytes, for the operator to fix
    [shown] = [
        row
        for row in engine.store.audit_log().records(newest_first=True, limit=20)
        if row.action == "access" and row.resource == f"QuarantinedMessage/{held_id}"
    ]
    assert shown.actor_kind == "user"

    fixed = tmp_path / "fixed.hl7"
    fixed.write_text(good)
    code, output = await careweave(
        engine,
        temporal_client,
        *("quarantine", "release", str(held_id), "--fixed", str(fixed), "--by", "ops-cli"),
    )
    assert code == 0, output
    assert f"order-to-result/{sm.HOSPITAL}/CLI-4002" in output
    await engine.wait_for_status(f"order-to-result/{sm.HOSPITAL}/CLI-4002", "ordered")

    code, output = await careweave(
        engine, temporal_client, "quarantine", "release", str(held_id), "--by", "ops-cli"
    )
    assert code == 1
    assert "already released" in output
