"""Lab clinical safety end to end (real Temporal dev server, worker, gateway and FHIR
server): a critical value corrected to normal keeps the provider's Task stat, with every
version of the Task kept; a result naming another patient than its order waits for a
reviewer and writes nothing until one decides."""

from __future__ import annotations

from urllib.parse import quote

from models.review import ReviewAction, ReviewDecision
from tests.integration.test_order_to_result_e2e import (
    read,
    report_and_task,
    send,
    workflow_id,
    written,
)
from tests.support.engine import Engine
from workers import sample_messages as sm


def report_identifier_value(order: sm.SampleOrder) -> str:
    # As the builders of mapping v2 derive it: the filler number, then OBR-4.
    return f"filler/{quote(sm.LAB, safe='')}/F{order.placer_order_number}/L:{order.local_code}"


async def test_critical_potassium_corrected_to_normal_keeps_a_stat_task(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1101", local_code="K", text="Potassium")
    wid = workflow_id(engine, order)
    await send(
        engine,
        sm.lab_order(order, "E2E-1101-O"),
        sm.lab_result(order, "E2E-1101-R1", [sm.POTASSIUM_CRITICAL]),
    )
    await engine.wait_for_status(wid, "final")
    _, first_task = await report_and_task(engine, order)
    assert first_task["priority"] == "stat"

    normal = sm.ResultValue("K", "Potassium", "4.1", "mmol/L", "3.5-5.1", "N")
    await send(engine, sm.lab_result(order, "E2E-1101-R2", [normal], result_status="C"))
    await engine.wait_for_status(wid, "corrected")

    report, task = await report_and_task(engine, order)
    assert report["status"] == "corrected"
    assert task["id"] == first_task["id"]
    assert task["priority"] == "stat"
    assert task["status"] == "requested"
    assert "critical value corrected" in task["description"]
    assert "6.9 mmol/L (HH) -> 4.1 mmol/L" in task["description"]
    observation = await read(engine, report["result"][0]["reference"])
    assert observation["valueQuantity"]["value"] == 4.1

    # The server keeps every version: the critical one the provider may have acted on.
    history = await engine.fhir.history("Task", task["id"])
    assert len(history) == 2
    [earlier] = [t for t in history if t["meta"]["versionId"] != task["meta"]["versionId"]]
    assert earlier["priority"] == "stat"
    assert "corrected" not in earlier["description"]
    assert earlier["description"].endswith("critical")


async def test_a_correction_after_the_exchange_closed_keeps_the_task_stat(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1104", local_code="K", text="Potassium")
    wid = workflow_id(engine, order)
    await send(
        engine,
        sm.lab_order(order, "E2E-1104-O"),
        sm.lab_result(order, "E2E-1104-R1", [sm.POTASSIUM_CRITICAL]),
    )
    first_run = await engine.handle(wid).result()  # closes after its correction window
    [task_ref] = {ref for ref in first_run["resources_written"] if ref.startswith("Task/")}

    # The correction starts a new run, which never saw the critical report.
    normal = sm.ResultValue("K", "Potassium", "4.1", "mmol/L", "3.5-5.1", "N")
    await send(engine, sm.lab_result(order, "E2E-1104-R2", [normal], result_status="C"))
    await engine.wait_for_status(wid, "corrected")
    task = await read(engine, task_ref)
    assert task["priority"] == "stat"
    assert "critical value corrected" in task["description"]
    assert len(await engine.fhir.history("Task", task["id"])) == 2


async def test_result_for_another_mrn_than_its_order_waits_for_a_reviewer(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1102", patient=sm.SamplePatient(mrn="MRN7101"))
    wid = workflow_id(engine, order)
    other_patient = sm.SampleOrder("E2E-1102", patient=sm.SamplePatient(mrn="MRN7102"))
    await send(
        engine,
        sm.lab_order(order, "E2E-1102-O"),
        sm.lab_result(other_patient, "E2E-1102-R1", [sm.SODIUM]),
    )
    pending = await engine.wait_for_review(wid)
    assert pending["reason"] == "patient-mismatch"
    assert "MRN710" not in str(pending["summary"])  # no PHI in what reaches lists and logs
    assert set(pending["actions"]) == {"approve", "reject"}
    assert await written(engine, order, "DiagnosticReport") == []
    found = await engine.fhir.search(
        "DiagnosticReport", {"identifier": report_identifier_value(order)}
    )
    assert found == []

    await engine.decide_review(
        wid,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.REJECT,
            reason="result is another patient's",
            reviewer="reviewer-7",
        ),
    )
    await engine.wait_for_status(wid, "result-rejected")
    assert await written(engine, order, "DiagnosticReport") == []

    # The order stays open: its own patient's result is then published as usual.
    await send(engine, sm.lab_result(order, "E2E-1102-R2", [sm.SODIUM]))
    await engine.wait_for_status(wid, "final")
    report, task = await report_and_task(engine, order)
    assert report["identifier"][0]["value"] == report_identifier_value(order)
    patient = await read(engine, report["subject"]["reference"])
    assert [i["value"] for i in patient["identifier"]] == ["MRN7101"]
    assert task["priority"] == "routine"


async def test_reviewer_may_confirm_a_mismatched_result_for_its_order(engine: Engine) -> None:
    order = sm.SampleOrder("E2E-1103", patient=sm.SamplePatient(mrn="MRN7103"))
    wid = workflow_id(engine, order)
    other_patient = sm.SampleOrder("E2E-1103", patient=sm.SamplePatient(mrn="MRN7104"))
    await send(
        engine,
        sm.lab_order(order, "E2E-1103-O"),
        sm.lab_result(other_patient, "E2E-1103-R1", [sm.SODIUM]),
    )
    pending = await engine.wait_for_review(wid)
    assert pending["reason"] == "patient-mismatch"
    await engine.decide_review(
        wid,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.APPROVE,
            reason="lab confirmed: MRN merged, same patient",
            reviewer="reviewer-8",
        ),
    )
    await engine.wait_for_status(wid, "final")
    assert await written(engine, order, "DiagnosticReport") != []
