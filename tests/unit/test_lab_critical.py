"""Critical lab values are never lost: flags (every OBX-8 repetition, any case), the
mapping's critical ranges (v2), a second OBR, and corrections that keep the Task stat."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.hl7v2.lab_messages import parse_lab_result, parse_lab_results
from mappings.order_to_result.concept_map import load_lab_mapping
from mappings.order_to_result.fhir_builders import (
    critical_findings,
    is_critical,
    report_key,
    result_transaction_for,
)
from models.lab import LabResult, PatientRef
from workers import sample_messages as sm

V1 = load_lab_mapping("v1")
V2 = load_lab_mapping("v2")
ORDER = sm.SampleOrder("CRIT-1", local_code="K", text="Potassium")


def result(*values: sm.ResultValue, status: str = "F") -> LabResult:
    return parse_lab_result(sm.lab_result(ORDER, "C-1", list(values), result_status=status))


def potassium(value: str, flag: str = "") -> sm.ResultValue:
    return sm.ResultValue("K", "Potassium", value, "mmol/L", "3.5-5.1", flag)


def task_of(bundle: dict[str, Any]) -> dict[str, Any]:
    [task] = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Task"]
    return task


@pytest.mark.parametrize("flag", ["HH", "LL", "AA", "hh", "H~HH", "N~LL"])
def test_critical_flags_in_any_obx8_repetition(flag: str) -> None:
    assert is_critical(result(potassium("6.9", flag)), V2)
    assert is_critical(result(potassium("6.9", flag)), V1)


@pytest.mark.parametrize("flag", ["H", "L", "A", "N", "H~A", "<", ">"])
def test_non_critical_flags_on_a_value_inside_the_critical_range(flag: str) -> None:
    assert not is_critical(result(potassium("5.9", flag)), V2)


@pytest.mark.parametrize(
    ("value", "critical"),
    [
        ("6.9", True),
        ("6.5", False),
        ("2.4", True),
        ("2.5", False),
        ("<2.0", True),  # every value it allows is below 2.5
        ("<2.5", True),
        ("<3.0", False),  # may be 2.9: not certainly critical
        (">7.0", True),
        (">6.0", False),
    ],
)
def test_critical_range_of_the_mapping_when_the_sender_flags_only_h_or_l(
    value: str, critical: bool
) -> None:
    observed = result(potassium(value, "H" if not value.startswith("<") else "L"))
    assert is_critical(observed, V2) is critical
    assert not is_critical(observed, V1)  # v1 declares no ranges: running exchanges keep it


def test_critical_range_needs_the_unit_it_is_declared_in() -> None:
    in_meq = sm.ResultValue("K", "Potassium", "6.9", "mEq/L", "3.5-5.1", "H")
    assert not is_critical(result(in_meq), V2)
    assert critical_findings(result(potassium("6.9", "H")), V2)[0].why == "critical range"


def test_critical_value_in_a_second_obr_of_the_message() -> None:
    text = sm.lab_result(ORDER, "C-2", [sm.SODIUM])
    second = sm.lab_result(
        sm.SampleOrder("CRIT-2", local_code="K", text="Potassium"),
        "C-2",
        [potassium("6.9", "H")],
        filler_order_number="FCRIT-2B",
    )
    # The second order group (ORC, OBR, OBX) of the same message.
    text += "".join(seg + "\r" for seg in second.split("\r")[2:] if seg)
    first_report, second_report = parse_lab_results(text)
    assert not is_critical(first_report, V2)
    assert is_critical(second_report, V2)
    assert task_of(result_transaction_for(second_report, V2))["priority"] == "stat"
    assert task_of(result_transaction_for(first_report, V2))["priority"] == "routine"


def test_critical_result_corrected_to_normal_keeps_a_stat_task_saying_so() -> None:
    critical = result(potassium("6.9", "HH"))
    corrected = result(potassium("4.1", "N"), status="C")
    task = task_of(result_transaction_for(corrected, V2, previous=critical))
    assert task["priority"] == "stat"
    assert "critical value corrected" in task["description"]
    assert "6.9 mmol/L (HH) -> 4.1 mmol/L" in task["description"]
    # Without what was published before, the same correction is routine: the knowledge matters.
    assert task_of(result_transaction_for(corrected, V2))["priority"] == "routine"


def test_preliminary_critical_amended_by_a_normal_final_stays_stat() -> None:
    preliminary = result(potassium("6.9", "HH"), status="P")
    final = result(potassium("4.1", "N"), status="F")
    task = task_of(result_transaction_for(final, V2, previous=preliminary))
    assert task["priority"] == "stat"
    assert "critical value corrected" in task["description"]


def test_critical_value_only_in_the_correction_becomes_stat() -> None:
    normal = result(potassium("4.1", "N"))
    corrected = result(potassium("6.9", "H"), status="C")
    task = task_of(result_transaction_for(corrected, V2, previous=normal))
    assert task["priority"] == "stat"
    assert "critical value corrected" not in task["description"]
    assert task["description"].endswith("critical")


def test_final_repeating_the_critical_value_says_critical_not_corrected() -> None:
    preliminary = result(potassium("6.9", "HH"), status="P")
    final = result(potassium("6.9", "HH"))
    task = task_of(result_transaction_for(final, V2, previous=preliminary))
    assert task["priority"] == "stat"
    assert "corrected" not in task["description"]


def test_patient_mismatch_is_same_authority_other_identifier() -> None:
    mrn = PatientRef(identifier="MRN1", assigning_authority="HOSP")
    assert PatientRef(identifier="MRN2", assigning_authority="HOSP").is_other_patient_than(mrn)
    assert not PatientRef(identifier="MRN1", assigning_authority="hosp").is_other_patient_than(mrn)
    # Another authority's number cannot be compared with this one.
    assert not PatientRef(identifier="X9", assigning_authority="LAB").is_other_patient_than(mrn)


def test_critical_value_in_a_second_obr_under_the_same_orc() -> None:
    # One ORC, two OBR groups: both carry the same order numbers.
    sodium_order = sm.SampleOrder("CRIT-3", local_code="NA", text="Sodium")
    text = sm.lab_result(sodium_order, "C-3", [sm.SODIUM])
    text += (
        f"OBR|2|CRIT-3^{sm.HOSPITAL}|FCRIT-3^{sm.LAB}|K^Potassium^L|||20261125083000"
        "|||||||||||||||20261125083000|||F\r"
        "OBX|1|NM|K^Potassium^L||6.9|mmol/L|3.5-5.1|HH|||F\r"
    )
    sodium_report, potassium_report = parse_lab_results(text)
    assert is_critical(potassium_report, V2)
    # v2: one report (and one Task) per OBR group, so the second cannot overwrite the first.
    assert report_key(sodium_report, V2) != report_key(potassium_report, V2)
    sodium_task = task_of(result_transaction_for(sodium_report, V2))
    potassium_task = task_of(result_transaction_for(potassium_report, V2))
    assert sodium_task["identifier"] != potassium_task["identifier"]
    assert potassium_task["priority"] == "stat"
    # v1 (pinned by running exchanges) keyed both groups alike: the workflow then passes the
    # critical group as ``previous`` of the next, which keeps the shared Task stat.
    assert report_key(sodium_report, V1) == report_key(potassium_report, V1)
    shared = task_of(result_transaction_for(sodium_report, V1, previous=potassium_report))
    assert shared["priority"] == "stat"


def test_stat_task_on_the_server_keeps_an_unknown_report_correction_stat() -> None:
    corrected = result(potassium("4.1", "N"), status="C")
    task = task_of(result_transaction_for(corrected, V2, stat_before=True))
    assert task["priority"] == "stat"
    assert "critical value corrected" in task["description"]
