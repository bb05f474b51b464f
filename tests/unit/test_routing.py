"""Routing on the ACK path: workflow ids from business keys, never PHI."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from adapters.hl7v2.header import DecodedMessage, MessageRejected, decode_message
from exchanges.order_to_result import lab_workflow_id
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS, id_part
from workers import sample_messages as sm
from workflows.order_to_result import OrderToResult

SUPPORTED_TYPES = REGISTRY.supported_types
REQUIRED_SEGMENTS = REGISTRY.required_segments
PSEUDONYM_KEY = b"routing-test-key"
route = functools.partial(REGISTRY.route, pseudonym_key=PSEUDONYM_KEY)

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"


def decoded(text: str | bytes) -> DecodedMessage:
    payload = text.encode() if isinstance(text, str) else text
    return decode_message(
        payload,
        supported_types=SUPPORTED_TYPES,
        supported_versions=SUPPORTED_VERSIONS,
        required_segments=REQUIRED_SEGMENTS,
    )


def test_order_and_its_result_reach_the_same_exchange() -> None:
    order = sm.SampleOrder("PO-77/A")
    to_order = route(decoded(sm.lab_order(order, "C1")))
    to_result = route(decoded(sm.lab_result(order, "C2", [sm.SODIUM])))
    expected = lab_workflow_id("GENHOSP", "PO-77/A", PSEUDONYM_KEY)
    assert to_order.workflow_id == to_result.workflow_id == expected
    assert "PO-77" not in expected  # the placer number is PHI-adjacent: never in clear
    assert to_order.legacy_workflow_id == "order-to-result/GENHOSP/PO-77_A"
    assert (to_order.signal, to_result.signal) == (
        OrderToResult.order_message,
        OrderToResult.result_message,
    )
    assert to_result.key.placer_order_number == "PO-77/A"  # the raw number still reaches FHIR


def test_workflow_id_carries_no_patient_data() -> None:
    order = sm.SampleOrder("PO-78")
    destination = route(decoded(sm.lab_result(order, "C3", [sm.SODIUM])))
    patient = order.patient
    for phi in (patient.mrn, patient.family, patient.given, patient.birth_date):
        assert phi not in destination.workflow_id


def test_result_without_placer_namespace_uses_the_receiving_facility() -> None:
    # NIST ELR: OBR-2 has a namespace; lri CBC from the converter has a bare number.
    message = decoded((CORPUS / "results" / "oru-r01-nist-corrected-1.hl7").read_bytes())
    destination = route(message)
    assert destination.workflow_id.startswith("order-to-result/")
    assert destination.key.placer_namespace == message.field("OBR", 2, component=2)


def test_missing_placer_and_filler_is_answered_ae_naming_the_field() -> None:
    with pytest.raises(MessageRejected) as refused:
        route(decoded((CORPUS / "adversarial" / "missing-placer-and-filler.hl7").read_bytes()))
    assert (refused.value.ack_code, refused.value.error_code) == ("AE", "101")
    assert refused.value.segment_id == "OBR"


def test_result_without_observations_is_refused_before_commit() -> None:
    text = sm.lab_result(sm.SampleOrder("PO-79"), "C4", [])
    with pytest.raises(MessageRejected) as refused:
        decoded(text)
    assert refused.value.ack_code == "AE"
    assert refused.value.segment_id == "OBX"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("PO 1/2^x", "PO_1_2_x"), ("", "unknown"), ("a" * 80, "a" * 64), ("LAB.01-x", "LAB.01-x")],
)
def test_id_part_keeps_ids_readable(raw: str, expected: str) -> None:
    assert id_part(raw) == expected


def with_obr2(text: str, obr2: str) -> str:
    """The message with OBR-2 replaced: senders whose ORC-2 and OBR-2 disagree."""
    lines = text.split("\r")
    for index, line in enumerate(lines):
        if line.startswith("OBR|"):
            fields = line.split("|")
            fields[2] = obr2
            lines[index] = "|".join(fields)
    return "\r".join(lines)


def without_orc(text: str) -> str:
    return "\r".join(line for line in text.split("\r") if not line.startswith("ORC|"))


def test_one_placer_rule_for_orders_and_results_whose_orc2_and_obr2_differ() -> None:
    order = sm.SampleOrder("PO-90")
    to_order = route(decoded(with_obr2(sm.lab_order(order, "C5"), "OBR-SIDE-1^GENHOSP")))
    to_result = route(
        decoded(with_obr2(sm.lab_result(order, "C6", [sm.SODIUM]), "OBR-SIDE-2^GENHOSP"))
    )
    # ORC-2 wins for both: one exchange, keyed by the order's ORC-2.
    expected = lab_workflow_id("GENHOSP", "PO-90", PSEUDONYM_KEY)
    assert to_order.workflow_id == to_result.workflow_id == expected
    assert to_result.key.placer_order_number == "PO-90"


def test_a_result_without_orc_is_keyed_by_obr2() -> None:
    order = sm.SampleOrder("PO-91")
    to_order = route(decoded(sm.lab_order(order, "C7")))
    to_result = route(decoded(without_orc(sm.lab_result(order, "C8", [sm.SODIUM]))))
    expected = lab_workflow_id("GENHOSP", "PO-91", PSEUDONYM_KEY)
    assert to_result.workflow_id == to_order.workflow_id == expected
