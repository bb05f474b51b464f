"""Lab order-to-result end to end: python-hl7's `mllp_send` -> gateway -> Temporal
-> worker -> the project's FHIR server; assertions read what landed in FHIR.
Each test uses its own placer order numbers, so they share one engine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.hl7v2.ack import parse_ack
from models.review import ReviewAction, ReviewDecision
from tests.support.engine import Engine, mllp_send
from tests.unit.test_lab_messages import with_notes, with_v23_specimen
from workers import sample_messages as sm
from workflows.search_attributes import exchange_status_query


def workflow_id(engine: Engine, order: sm.SampleOrder) -> str:
    return engine.lab_workflow_id(order.placer_order_number)


async def send(engine: Engine, *messages: str) -> list[str]:
    acks = await mllp_send(engine.mllp_port, list(messages))
    return [parse_ack(ack)[0] for ack in acks]


async def written(engine: Engine, order: sm.SampleOrder, resource_type: str) -> list[str]:
    refs: list[str] = await engine.handle(workflow_id(engine, order)).query("resources_written")
    return [ref for ref in refs if ref.startswith(f"{resource_type}/")]


async def eventually_written(
    engine: Engine, order: sm.SampleOrder, resource_type: str, timeout: float = 20
) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (refs := await written(engine, order, resource_type)):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    return refs


async def read(engine: Engine, ref: str) -> dict[str, Any]:
    resource_type, resource_id = ref.split("/")
    return await engine.fhir.read(resource_type, resource_id)


async def report_and_task(
    engine: Engine, order: sm.SampleOrder
) -> tuple[dict[str, Any], dict[str, Any]]:
    [report_ref] = sorted(set(await written(engine, order, "DiagnosticReport")))
    task_refs = sorted(set(await written(engine, order, "Task")))
    return await read(engine, report_ref), await read(engine, task_refs[0])


def loinc_codes(observation: dict[str, Any]) -> set[str]:
    return {
        coding["code"]
        for coding in observation["code"]["coding"]
        if coding.get("system") == "http://loinc.org"
    }


async def test_order_then_final_result_lands_in_fhir(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1001")
    assert await send(
        engine,
        sm.lab_order(order, "E2E-1001-O"),
        sm.lab_result(order, "E2E-1001-R", [sm.SODIUM, sm.POTASSIUM]),
    ) == ["AA", "AA"]
    await engine.wait_for_status(workflow_id(engine, order), "final")

    [request_ref] = await written(engine, order, "ServiceRequest")
    service_request = await read(engine, request_ref)
    assert service_request["status"] == "active"
    assert any(i["value"] == "E2E-1001" for i in service_request["identifier"])

    report, task = await report_and_task(engine, order)
    assert report["status"] == "final"
    assert len(report["result"]) == 2
    observations = [await read(engine, ref["reference"]) for ref in report["result"]]
    codes = set().union(*(loinc_codes(o) for o in observations))
    assert codes == {"2951-2", "2823-3"}  # sodium, potassium
    sodium = next(o for o in observations if "2951-2" in loinc_codes(o))
    assert sodium["valueQuantity"]["value"] == 140
    assert sodium["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert sodium["referenceRange"][0]["low"]["value"] == 136
    assert task["priority"] == "routine"
    assert task["focus"]["reference"].startswith("DiagnosticReport/")


async def test_critical_value_puts_a_stat_task_in_the_work_queue(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1002", local_code="K", text="Potassium")
    await send(
        engine,
        sm.lab_order(order, "E2E-1002-O"),
        sm.lab_result(order, "E2E-1002-R", [sm.POTASSIUM_CRITICAL]),
    )
    await engine.wait_for_status(workflow_id(engine, order), "final")
    report, task = await report_and_task(engine, order)
    assert task["priority"] == "stat"
    [observation_ref] = report["result"]
    observation = await read(engine, observation_ref["reference"])
    assert observation["interpretation"][0]["coding"][0]["code"] == "HH"


async def test_corrected_result_updates_the_same_resources(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1003")
    await send(
        engine,
        sm.lab_order(order, "E2E-1003-O"),
        sm.lab_result(order, "E2E-1003-R1", [sm.SODIUM]),
    )
    await engine.wait_for_status(workflow_id(engine, order), "final")
    first_report, _ = await report_and_task(engine, order)

    corrected = sm.ResultValue("NA", "Sodium", "133", "mmol/L", "136-145", "L")
    await send(engine, sm.lab_result(order, "E2E-1003-R2", [corrected], result_status="C"))
    await engine.wait_for_status(workflow_id(engine, order), "corrected")

    report, _ = await report_and_task(engine, order)
    assert report["id"] == first_report["id"]
    assert report["status"] == "corrected"
    history = await engine.fhir.history("DiagnosticReport", report["id"])
    assert len(history) == 2
    observation = await read(engine, report["result"][0]["reference"])
    assert observation["valueQuantity"]["value"] == 133
    assert observation["status"] == "corrected"
    reports = await engine.fhir.search(
        "DiagnosticReport", {"identifier": report["identifier"][0]["value"]}
    )
    assert len(reports) == 1


async def test_resent_message_is_acknowledged_and_written_once(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1004")
    result = sm.lab_result(order, "E2E-1004-R", [sm.SODIUM])
    assert await send(engine, sm.lab_order(order, "E2E-1004-O"), result) == ["AA", "AA"]
    await engine.wait_for_status(workflow_id(engine, order), "final")
    assert await send(engine, result) == ["AA"]
    await asyncio.sleep(1.5)
    report, _ = await report_and_task(engine, order)
    assert len(await engine.fhir.history("DiagnosticReport", report["id"])) == 1
    runs = [
        e
        async for e in engine.client.list_workflows(f"WorkflowId = '{workflow_id(engine, order)}'")
    ]
    assert len(runs) == 1


async def test_result_before_its_order_waits_for_the_order(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1005", local_code="GLU", text="Glucose")
    await send(engine, sm.lab_result(order, "E2E-1005-R", [sm.GLUCOSE_HIGH]))
    await engine.wait_for_status(workflow_id(engine, order), "awaiting-order")
    assert await written(engine, order, "DiagnosticReport") == []
    await send(engine, sm.lab_order(order, "E2E-1005-O"))
    await engine.wait_for_status(workflow_id(engine, order), "final")
    report, _ = await report_and_task(engine, order)
    assert report["status"] == "final"
    refs: list[str] = await engine.handle(workflow_id(engine, order)).query("resources_written")
    kinds = [ref.split("/")[0] for ref in refs]
    # The order was written before the result (its Patient may come first of all).
    assert kinds.index("ServiceRequest") < kinds.index("DiagnosticReport")


async def test_unmapped_local_code_goes_to_review_then_publishes(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1006", local_code="ZZX9", text="Experimental")
    await send(
        engine,
        sm.lab_order(order, "E2E-1006-O"),
        sm.lab_result(order, "E2E-1006-R", [sm.UNMAPPED]),
    )
    pending = await engine.wait_for_review(workflow_id(engine, order))
    assert pending["reason"] == "unmapped-code"
    assert "L|ZZX9" in pending["details"]
    visible = await engine.client.count_workflows(
        f"WorkflowId = '{workflow_id(engine, order)}' AND ReviewState = 'pending'"
    )
    assert visible.count == 1
    assert await written(engine, order, "DiagnosticReport") == []

    handle = engine.handle(workflow_id(engine, order))
    await engine.decide_review(
        workflow_id(engine, order),
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.APPROVE,
            reason="local code checked with the lab",
            reviewer="reviewer-1",
        ),
    )
    await engine.wait_for_status(workflow_id(engine, order), "final")
    report, _ = await report_and_task(engine, order)
    observation = await read(engine, report["result"][0]["reference"])
    assert loinc_codes(observation) == set()
    assert observation["code"]["coding"][0]["code"] == "ZZX9"
    history = await handle.query("review_history")
    assert history[0]["decision"]["reviewer"] == "reviewer-1"


async def test_result_for_an_order_never_seen_goes_to_review(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1007")
    await send(engine, sm.lab_result(order, "E2E-1007-R", [sm.SODIUM]))
    pending = await engine.wait_for_review(workflow_id(engine, order), timeout=20)
    assert pending["reason"] == "unknown-order"
    await engine.decide_review(
        workflow_id(engine, order),
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.REJECT,
            reason="not our patient",
            reviewer="reviewer-2",
        ),
    )
    await engine.wait_for_status(workflow_id(engine, order), "result-rejected")
    assert await written(engine, order, "DiagnosticReport") == []


async def test_stat_order_without_result_becomes_overdue_and_escalates(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1008", priority="S")
    await send(engine, sm.lab_order(order, "E2E-1008-O"))
    await engine.wait_for_status(workflow_id(engine, order), "overdue", timeout=20)
    overdue = await engine.client.count_workflows(
        f"WorkflowId = '{workflow_id(engine, order)}' AND {exchange_status_query('overdue')}"
    )
    assert overdue.count == 1
    # The status turns overdue first; the escalation Task is the activity that follows.
    [task_ref] = await eventually_written(engine, order, "Task")
    task = await read(engine, task_ref)
    assert task["priority"] == "stat"


async def test_cancel_revokes_the_service_request(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1009")
    await send(engine, sm.lab_order(order, "E2E-1009-O"))
    await engine.wait_for_status(workflow_id(engine, order), "ordered")
    await send(engine, sm.lab_order(order, "E2E-1009-C", order_control="CA"))
    await engine.wait_for_status(workflow_id(engine, order), "cancelled")
    refs = set(await written(engine, order, "ServiceRequest"))
    assert len(refs) == 1
    assert (await read(engine, refs.pop()))["status"] == "revoked"


async def test_review_validator_refuses_malformed_decisions(engine: Engine) -> None:
    from temporalio.client import WorkflowUpdateFailedError

    order = sm.SampleOrder("E2E-1010", local_code="ZZX9", text="Experimental")
    await send(
        engine,
        sm.lab_order(order, "E2E-1010-O"),
        sm.lab_result(order, "E2E-1010-R", [sm.UNMAPPED]),
    )
    pending = await engine.wait_for_review(workflow_id(engine, order))
    handle = engine.handle(workflow_id(engine, order))
    # Each signed as the API signs: the proof holds, so the workflow's own validator is what
    # refuses them, with its reason.
    for bad, refused_because in (
        (
            ReviewDecision(review_id="r99", action=ReviewAction.APPROVE, reason="x", reviewer="a"),
            "review r99 is not pending",
        ),
        (
            ReviewDecision(
                review_id=str(pending["review_id"]),
                action=ReviewAction.APPROVE,
                reason="  ",
                reviewer="a",
            ),
            "a decision needs a reason",
        ),
        (
            ReviewDecision(
                review_id=str(pending["review_id"]),
                action=ReviewAction.APPROVE,
                reason="ok",
                reviewer="",
            ),
            "a decision needs the reviewer's identity",
        ),
    ):
        try:
            await engine.decide_review(workflow_id(engine, order), bad)
        except WorkflowUpdateFailedError as err:
            assert refused_because in str(err.cause), err.cause
        else:
            raise AssertionError(f"decision accepted: {bad}")
    assert (await handle.query("pending_review")) is not None
    await engine.decide_review(
        workflow_id(engine, order),
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.REJECT,
            reason="test over",
            reviewer="reviewer-3",
        ),
    )
    await engine.wait_for_status(workflow_id(engine, order), "result-rejected")
    try:
        await engine.decide_review(
            workflow_id(engine, order),
            ReviewDecision(
                review_id=str(pending["review_id"]),
                action=ReviewAction.APPROVE,
                reason="second decision",
                reviewer="reviewer-3",
            ),
        )
    except WorkflowUpdateFailedError:
        pass
    else:
        raise AssertionError("a second decision for a closed review was accepted")


async def test_a_result_the_full_parser_refuses_waits_for_a_reviewer(engine: Engine) -> None:
    # The ACK path checks that an OBR and an OBX are present, not their order; the full parse
    # (a local activity) refuses an OBX before any OBR. That refusal reaches the workflow
    # unwrapped: it must still ask a reviewer, not fail the exchange.
    order = sm.SampleOrder("PO-RVW-PARSE")
    lines = sm.lab_result(order, "OR-PARSE-1", [sm.SODIUM]).rstrip("\r").split("\r")
    obr = next(line for line in lines if line.startswith("OBR|"))
    misordered = [line for line in lines if line != obr] + [obr]
    acks = await mllp_send(
        engine.mllp_port, [sm.lab_order(order, "OR-PARSE-0"), "\r".join(misordered) + "\r"]
    )
    assert all("MSA|AA" in ack for ack in acks), acks
    pending = await engine.wait_for_review(workflow_id(engine, order), timeout=30)
    assert pending["reason"] == "invalid-message"
    assert "OBX" in pending["summary"]


async def test_nte_comments_reach_the_fhir_server_as_notes(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1020")
    result = with_notes(sm.lab_result(order, "E2E-1020-R", [sm.POTASSIUM, sm.SODIUM]))
    assert await send(engine, sm.lab_order(order, "E2E-1020-O"), result) == ["AA", "AA"]
    await engine.wait_for_status(workflow_id(engine, order), "final")
    report, _ = await report_and_task(engine, order)
    assert [e["valueAnnotation"]["text"] for e in report["extension"]] == [
        "Specimen slightly hemolyzed\nRecollect if K high"
    ]
    observation = await read(engine, report["result"][0]["reference"])
    assert observation["note"] == [{"text": "Verified by repeat & dilution\nCalled to ward"}]


async def test_the_specimen_is_written_with_its_collection_time(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1021")
    result = with_v23_specimen(sm.lab_result(order, "E2E-1021-R", [sm.SODIUM]))
    assert await send(engine, sm.lab_order(order, "E2E-1021-O"), result) == ["AA", "AA"]
    await engine.wait_for_status(workflow_id(engine, order), "final")
    report, _ = await report_and_task(engine, order)
    [specimen_ref] = report["specimen"]
    specimen = await read(engine, specimen_ref["reference"])
    assert specimen["collection"]["collectedDateTime"].startswith("2026-11-25")
    assert specimen["type"]["coding"][0]["code"] == "BLD"
    observation = await read(engine, report["result"][0]["reference"])
    assert observation["specimen"] == specimen_ref
