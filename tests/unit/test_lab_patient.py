"""The Patient an order or result names (mapping v2: conditional create from the PID and
literal references; v1: logical references only) and its requester known by name only."""

from __future__ import annotations

from typing import Any

from adapters.hl7v2.lab_messages import parse_lab_order, parse_lab_result
from mappings.order_to_result.concept_map import load_lab_mapping
from mappings.order_to_result.fhir_builders import (
    order_transaction_for,
    result_transaction_for,
    service_request_for,
)
from models.demographics import contradicting_identifiers
from tests.integration.test_lab_patient_e2e import with_full_pid
from workers import sample_messages as sm

V1 = load_lab_mapping("v1")
V2 = load_lab_mapping("v2")
ORDER = sm.SampleOrder("U-3001", patient=sm.SamplePatient(mrn="MRN-U3001"))


def entries(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def test_v2_result_creates_its_patient_if_absent_and_refers_to_it_literally() -> None:
    result = parse_lab_result(with_full_pid(sm.lab_result(ORDER, "R", [sm.SODIUM]), "MRN-U3001"))
    bundle = result_transaction_for(result, V2)
    [patient] = entries(bundle, "Patient")
    assert patient["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": "identifier=urn%3Acareweave%3Apatient-id%3AGENHOSP%7CMRN-U3001"
        "&active:not=false",
    }
    assert len(patient["resource"]["identifier"]) == 2  # MR and SS
    assert patient["resource"]["name"][0]["given"] == ["Ada", "Maria"]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        subject = resource.get("subject") or resource.get("for")
        if subject is not None:
            assert subject["reference"] == patient["fullUrl"]


def test_v1_writes_no_patient_and_refers_by_identifier() -> None:
    result = parse_lab_result(with_full_pid(sm.lab_result(ORDER, "R", [sm.SODIUM]), "MRN-U3001"))
    bundle = result_transaction_for(result, V1)
    assert not entries(bundle, "Patient")
    [report] = entries(bundle, "DiagnosticReport")
    assert "reference" not in report["resource"]["subject"]
    assert report["resource"]["subject"]["identifier"]["value"] == "MRN-U3001"


def test_unreadable_pid_date_still_creates_a_patient_from_the_key_identifier() -> None:
    message = sm.lab_result(ORDER, "R", [sm.SODIUM]).replace("|19720415|", "|1972-04-15|")
    result = parse_lab_result(message)
    assert result.person is None
    [patient] = entries(result_transaction_for(result, V2), "Patient")
    assert [i["value"] for i in patient["resource"]["identifier"]] == ["MRN-U3001"]
    assert "birthDate" not in patient["resource"]


def test_v2_order_is_one_transaction_with_its_patient() -> None:
    order = parse_lab_order(sm.lab_order(ORDER, "O"))
    bundle = order_transaction_for(order, V2)
    [patient] = entries(bundle, "Patient")
    [request] = entries(bundle, "ServiceRequest")
    assert request["resource"]["subject"] == {"reference": patient["fullUrl"], "type": "Patient"}
    assert request["request"]["method"] == "PUT"


def test_requester_known_by_name_only_is_named_and_owns_no_task() -> None:
    nameless = sm.lab_order(ORDER, "O").replace("1234567893^Welby", "^Welby")
    order = parse_lab_order(nameless)
    assert order.ordering_provider is not None and order.ordering_provider.id == ""
    request = service_request_for(order, V2)
    assert request["requester"] == {"type": "Practitioner", "display": "Marcus Welby"}
    result = parse_lab_result(
        sm.lab_result(ORDER, "R", [sm.SODIUM]).replace("1234567893^Welby", "^Welby")
    )
    [task] = entries(result_transaction_for(result, V2), "Task")
    assert "owner" not in task["resource"]


def test_a_provider_with_an_id_wins_over_one_known_by_name_only() -> None:
    # ORC-12 names the requester without an id, OBR-16 with one: the id addresses the Task.
    message = sm.lab_result(ORDER, "R", [sm.SODIUM])
    orc = message.split("\rORC|", 1)[1].split("\r", 1)[0]
    message = message.replace(orc, orc.replace("1234567893^Welby", "^Welby"))
    result = parse_lab_result(message)
    assert result.ordering_provider is not None
    assert result.ordering_provider.id == "1234567893"


def test_another_mrn_in_a_second_pid3_repetition_is_a_contradiction() -> None:
    # Same MRN (the key identifier) but another national id of the same authority: two
    # patients (or a registration error) that the key identifiers alone cannot tell.
    order = parse_lab_order(with_full_pid(sm.lab_order(ORDER, "O"), "MRN-U3001"))
    result_message = with_full_pid(sm.lab_result(ORDER, "R", [sm.SODIUM]), "MRN-U3001")
    result_message = result_message.replace(
        "PID|1||MRN-U3001^^^GENHOSP^MR~SSN-MRN-U3001^^^USSSA^SS",
        "PID|1||MRN-U3001^^^GENHOSP^MR~SSN-OTHER^^^USSSA^SS",
    )
    result = parse_lab_result(result_message)
    assert not result.patient.is_other_patient_than(order.patient)
    assert contradicting_identifiers(order.person, result.person) == ("USSSA SS",)
    assert contradicting_identifiers(order.person, order.person) == ()
    # Unknown PIDs (runs recorded before the whole PID was read) contradict nothing.
    assert contradicting_identifiers(None, result.person) == ()
