"""Routing among exchanges sharing a message type (ExchangeSpec.claims): imaging orders
(OBR-24 section or an imaging procedure code) go to imaging-order, the rest stays lab.
The imaging exchange is registered here beside lab, as exchanges/registry.py will."""

from __future__ import annotations

import pytest

from adapters.hl7v2.header import MessageRejected
from exchanges import discharge_sync, imaging_order, order_to_result, patient_sync
from exchanges.sdk import ExchangeRegistry
from tests.unit.test_exchange_registry import decoded_with_any_type
from workers import sample_messages as sm

REGISTRY = ExchangeRegistry(
    [
        order_to_result.EXCHANGE,
        imaging_order.EXCHANGE,
        discharge_sync.EXCHANGE,
        patient_sync.EXCHANGE,
    ]
)


def _with_obr(text: str, position: int, value: str) -> str:
    segments = text.split("\r")
    for index, segment in enumerate(segments):
        if segment.startswith("OBR|"):
            fields = segment.split("|")
            fields += [""] * (position + 1 - len(fields))
            fields[position] = value
            segments[index] = "|".join(fields)
    return "\r".join(segments)


def test_an_order_with_an_imaging_section_goes_to_imaging_and_a_lab_order_stays_lab() -> None:
    lab = sm.lab_order(sm.SampleOrder("PO-IMG-1"), "C1")
    ct = _with_obr(_with_obr(lab, 24, "CT"), 18, "ACC-77")
    routed = REGISTRY.route(decoded_with_any_type(ct), pseudonym_key=b"k")
    assert routed.exchange == "imaging-order"
    assert "ACC-77" not in routed.workflow_id
    assert routed.workflow_id == imaging_order.imaging_workflow_id("ACC-77", b"k")
    assert REGISTRY.route(decoded_with_any_type(lab), pseudonym_key=b"k").exchange == (
        "order-to-result"
    )


def test_a_report_reaches_its_order_s_exchange_by_accession() -> None:
    result = sm.lab_result(sm.SampleOrder("PO-IMG-2"), "C2", [])
    report = _with_obr(_with_obr(result, 24, "RAD"), 18, "ACC-78")
    routed = REGISTRY.route(decoded_with_any_type(report), pseudonym_key=b"k")
    assert routed.workflow_id == imaging_order.imaging_workflow_id("ACC-78", b"k")
    assert routed.signal == imaging_order.ImagingOrder.report_message


def test_an_imaging_order_without_accession_nor_filler_number_gets_ae() -> None:
    order = _with_obr(sm.lab_order(sm.SampleOrder("PO-IMG-3"), "C3"), 24, "MR")
    order = "\r".join(
        "|".join(f if i != 3 else "" for i, f in enumerate(s.split("|")))
        if s[:3] in ("ORC", "OBR")
        else s
        for s in order.split("\r")
    )
    with pytest.raises(MessageRejected) as refused:
        REGISTRY.route(decoded_with_any_type(order), pseudonym_key=b"k")
    assert (refused.value.ack_code, refused.value.segment_id) == ("AE", "OBR")
