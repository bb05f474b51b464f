"""The audit trail of real exchanges: gateway -> Temporal -> worker -> FHIR server leaves
RECEIVE, TRANSFORM and PUSH rows under the exchange's id; `careweave audit verify` (a
process) passes, then fails naming the seq of a row someone edited in the database file.
Failures use test_fhir_failures' setups: a FHIR refusal is an EXCEPTION row, an
unreachable server a RETRY row per attempt after the first."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from fhir.resources.R4B.auditevent import AuditEvent
from temporalio.client import Client

from models.records import AuditRecord
from models.review import ReviewAction, ReviewDecision
from tests.support.cli import careweave
from tests.support.engine import Engine, audit_rows, mllp_send, running_engine
from tests.support.fhir_server import free_port
from workers import sample_messages as sm


def workflow_id(engine: Engine, order: sm.SampleOrder) -> str:
    return engine.lab_workflow_id(order.placer_order_number)


def steps(rows: list[AuditRecord]) -> set[tuple[str, str, str]]:
    return {(row.action, row.resource or "", row.outcome) for row in rows}


async def test_an_exchange_is_audited_and_verify_catches_an_edited_row(
    temporal_client: Client, fhir_base_url: str, tmp_path: Path
) -> None:
    # Its own engine (own database file), since this test tampers with the trail.
    async with running_engine(
        temporal_client, fhir_base_url, task_queue="careweave-test-audit"
    ) as engine:
        order = sm.SampleOrder("AUD-5001")
        await mllp_send(
            engine.mllp_port,
            [
                sm.lab_order(order, "AUD-5001-O"),
                sm.lab_result(order, "AUD-5001-R", [sm.SODIUM, sm.POTASSIUM]),
            ],
        )
        await engine.wait_for_status(workflow_id(engine, order), "final")
        expected = {
            ("receive", "ORM^O01 AUD-5001-O", "success"),
            ("receive", "ORU^R01 AUD-5001-R", "success"),
            ("transform", "interpret_lab_order", "success"),
            ("transform", "interpret_lab_result", "success"),
            ("push", "publish_service_request", "success"),
            ("push", "publish_lab_result", "success"),
        }
        rows = await audit_rows(
            engine, workflow_id(engine, order), lambda rows: expected <= steps(rows)
        )
        assert expected <= steps(rows), steps(rows)
        senders = {row.actor for row in rows if row.action == "receive"}
        assert senders == {f"{sm.HOSPITAL_APP}^{sm.HOSPITAL}", f"{sm.LAB_APP}^{sm.LAB}"}
        workers = {row.actor for row in rows if row.action in ("transform", "push")}
        assert workers == {"careweave-worker"}
        # No patient data in the trail: the sample patient's name appears nowhere.
        assert not any("Testpatient" in row.model_dump_json() for row in rows)

        code, output = await careweave(engine, temporal_client, "audit", "verify")
        assert code == 0, output
        assert "chain OK" in output
        [anchor] = re.findall(r"anchor: (\d+:[0-9a-f]{64})", output)

        code, output = await careweave(
            engine, temporal_client, "audit", "list", "--exchange", workflow_id(engine, order)
        )
        assert code == 0, output
        assert "publish_lab_result" in output

        export = tmp_path / "audit.ndjson"
        code, output = await careweave(
            engine, temporal_client, "audit", "export", "--out", str(export)
        )
        assert code == 0, output
        events = [json.loads(line) for line in export.read_text().splitlines()]
        assert len(events) >= len(rows)
        for event in events:
            AuditEvent.model_validate(event)

        [edited] = [row for row in rows if row.resource == "interpret_lab_order"]
        database = engine.settings.resolved_database_url.removeprefix("sqlite:///")
        # Cut the newest row: the shorter chain still verifies, the anchor kept elsewhere not.
        anchored_seq = int(anchor.split(":")[0])
        assert anchored_seq > edited.seq
        with sqlite3.connect(database) as connection:
            connection.execute("DROP TRIGGER audit_event_no_delete")
            connection.execute("DELETE FROM audit_event WHERE seq >= ?", (anchored_seq,))
        code, output = await careweave(engine, temporal_client, "audit", "verify")
        assert code == 0, output
        code, output = await careweave(
            engine, temporal_client, "audit", "verify", "--anchor", anchor
        )
        assert code == 1, output
        assert f"anchored seq {anchored_seq} is gone" in output
        with sqlite3.connect(database) as connection:
            connection.execute("DROP TRIGGER audit_event_no_update")
            connection.execute(
                "UPDATE audit_event SET outcome = 'failure' WHERE seq = ?", (edited.seq,)
            )
        code, output = await careweave(engine, temporal_client, "audit", "verify")
        assert code == 1, output
        assert f"seq {edited.seq}:" in output
        assert "row edited" in output


async def test_a_refused_fhir_write_is_an_exception_row(
    temporal_client: Client, fhir_base_url: str
) -> None:
    wrong_base = fhir_base_url.removesuffix("/fhir") + "/not-fhir"
    async with running_engine(
        temporal_client, wrong_base, task_queue="careweave-test-audit-refused"
    ) as engine:
        order = sm.SampleOrder("AUD-5002")
        await mllp_send(engine.mllp_port, [sm.lab_order(order, "AUD-5002-O")])
        pending = await engine.wait_for_review(workflow_id(engine, order))
        rows = await audit_rows(
            engine,
            workflow_id(engine, order),
            lambda rows: any(row.action == "exception" for row in rows),
        )
        [failed] = [row for row in rows if row.action == "exception"]
        assert failed.resource == "publish_service_request"
        assert failed.outcome == "failure"
        # Refused on its first attempt, the local one: not tried again as an activity.
        assert failed.detail == "ApplicationError FhirRejected (non-retryable), attempt 1 (local)"
        assert not any(row.action == "retry" for row in rows)  # refused: not retried
        assert engine.store.audit_log().verify().ok

        # Closed here: a review left pending on this engine's queue, whose worker stops
        # with the test, would make `careweave review list` fail to query it later.
        await engine.decide_review(
            workflow_id(engine, order),
            ReviewDecision(
                review_id=str(pending["review_id"]),
                action=ReviewAction.REJECT,
                reason="test over",
                reviewer="ops1",
            ),
        )
        await engine.wait_for_status(workflow_id(engine, order), "write-rejected")


async def test_an_unreachable_fhir_server_leaves_retry_rows(temporal_client: Client) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/fhir"
    async with running_engine(
        temporal_client, base_url, task_queue="careweave-test-audit-down"
    ) as engine:
        order = sm.SampleOrder("AUD-5003")
        await mllp_send(engine.mllp_port, [sm.lab_order(order, "AUD-5003-O")])
        rows = await audit_rows(
            engine,
            workflow_id(engine, order),
            lambda rows: any(row.action == "retry" for row in rows),
        )
        failures = [row for row in rows if row.resource == "publish_service_request"]
        actions = [row.action for row in failures]
        # The write is tried once as a local activity, then as an activity with retries.
        assert actions[:4] == ["exception", "exception", "retry", "exception"], actions
        local, first, retry, second = failures[:4]
        assert local.detail.endswith("attempt 1 (local)")
        assert first.detail.endswith(", attempt 1")
        assert retry.detail == second.detail
        assert second.detail.endswith("attempt 2")
        assert "FhirRetryableError" in second.detail
        assert retry.seq + 1 == second.seq  # written together, in one transaction
