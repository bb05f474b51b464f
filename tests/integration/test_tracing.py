"""One trace per message, from the gateway's receive to the FHIR write, with no PHI."""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.engine import Engine, mllp_send
from workers import sample_messages as sm


async def test_a_result_is_one_trace_from_mllp_to_fhir(
    engine: Engine, spans: InMemorySpanExporter
) -> None:
    order = sm.SampleOrder("TRACE-1")
    workflow_id = engine.lab_workflow_id(order.placer_order_number)
    await mllp_send(engine.mllp_port, [sm.lab_order(order, "TRACE-1-O")])
    await engine.wait_for_status(workflow_id, "ordered")
    spans.clear()
    await mllp_send(engine.mllp_port, [sm.lab_result(order, "TRACE-1-R", [sm.SODIUM])])
    await engine.wait_for_status(workflow_id, "final")
    await asyncio.sleep(0.5)  # the last span ends after the status changes

    finished = spans.get_finished_spans()
    receive = [s for s in finished if s.name == "mllp.receive"]
    assert len(receive) == 1
    trace_id = receive[0].context.trace_id
    in_trace = [s for s in finished if s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    assert "SignalWithStartWorkflow:OrderToResult" in names
    assert any(name.startswith("RunActivity:publish_lab_result") for name in names), names
    assert any(name.startswith("fhir.") for name in names), names

    patient = sm.SamplePatient()
    phi = (patient.mrn, patient.family, patient.given, patient.birth_date)
    for span in finished:
        for value in (span.attributes or {}).values():
            assert not any(item in str(value) for item in phi), (span.name, value)
