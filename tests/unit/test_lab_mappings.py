"""Lab mapping v1 and FHIR builders on real corpus messages; every output validated with R4B."""

from __future__ import annotations

import csv
import io
import re
from importlib import resources
from typing import Any
from urllib.parse import unquote

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.servicerequest import ServiceRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.hl7v2.lab_messages import parse_lab_order, parse_lab_result, parse_lab_results
from mappings.order_to_result.concept_map import (
    concept_map_problems,
    concept_rows_problems,
    load_lab_mapping,
    unmapped_codes,
)
from mappings.order_to_result.fhir_builders import (
    escalation_task_for,
    is_critical,
    result_transaction_for,
    service_request_for,
)
from tests.unit.test_lab_messages import (
    REFUSED,
    RESULT_FILES,
    corpus,
    with_notes,
    with_v23_specimen,
)
from workers import sample_messages as sm

MAPPING = load_lab_mapping("v1")


def entries_of(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def only(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    (entry,) = entries_of(bundle, resource_type)
    return entry


# --- mapping data -------------------------------------------------------------------------


def test_mapping_is_versioned_and_cached() -> None:
    assert MAPPING.version == "v1"
    assert load_lab_mapping() is MAPPING
    assert MAPPING.mapping_tag_code == "lab-v1"


def test_csv_rows_are_well_formed_loinc() -> None:
    text = resources.files("mappings.order_to_result").joinpath("local_to_loinc.v1.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == [
        "local_system",
        "local_code",
        "loinc_code",
        "loinc_display",
        "ucum_unit",
        "source",
    ]
    for row in rows:
        assert re.fullmatch(r"\d{1,7}-\d", row["loinc_code"]), row
        assert row["local_system"] != "LN"  # LOINC-coded input needs no row
        assert not row["ucum_unit"] or MAPPING.ucum(row["ucum_unit"]) == row["ucum_unit"]


def test_to_loinc() -> None:
    assert MAPPING.to_loinc("LN", "2160-0") is not None
    concept = MAPPING.to_loinc("99USI", "3456543")
    assert concept is not None
    assert (concept.code, concept.ucum_unit) == ("10368-9", "ug/dL")
    local = MAPPING.to_loinc("", "CREA")  # an unqualified code is sender-local (L)
    assert local is not None
    assert local.code == "2160-0"
    assert MAPPING.to_loinc("L", "NOPE") is None


def test_units_normalise_case_and_keep_unknown_as_text() -> None:
    assert MAPPING.ucum("ug/dl") == "ug/dL"
    assert MAPPING.ucum("tera.l-1") == "10*12/L"
    assert MAPPING.ucum("{cells}/uL") == "{cells}/uL"
    assert MAPPING.ucum("beats/min") is None


def test_status_tables() -> None:
    assert MAPPING.observation_status["C"] == "corrected"
    assert MAPPING.observation_status["X"] == "cancelled"
    assert MAPPING.report_status["F"] == "final"
    assert MAPPING.report_status["P"] == "preliminary"
    assert MAPPING.critical_flags == {"HH", "LL", "AA"}


# --- unmapped codes -------------------------------------------------------------------------


def test_loinc_coded_results_have_no_unmapped_codes() -> None:
    for name in (
        "results/oru-r01-nist-1.hl7",
        "results/oru-r01-lri-cbc-msfhirconv-1.hl7",
        "adversarial/nonnumeric-nm-values.hl7",
    ):
        assert unmapped_codes(parse_lab_result(corpus(name)), MAPPING) == []


def test_unmapped_codes_of_the_v24_sample() -> None:
    # OBR-4 has no coding system (read as L); OBX 2 puts LOINC parts in CWE-3
    # and its code has no row. OBX 1 (1554-5) has one.
    result = parse_lab_result(corpus("results/oru-r01-v24-pythonhl7-1.hl7"))
    assert unmapped_codes(result, MAPPING) == [
        "L|1554-5",
        "POST 12H CFST:MCNC:PT:SER/PLAS:QN|1553-5",
    ]


def test_local_codes_map_through_the_csv() -> None:
    text = (
        corpus("adversarial/nonnumeric-nm-values.hl7")
        .replace(
            "OBX|1|NM|2160-0^Creatinine [Mass/volume] in Serum or Plasma^LN|",
            "OBX|1|NM|CREA^Creatinine^L|",
        )
        .replace(
            "OBX|4|SN|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN|",
            "OBX|4|SN|K^Potassium^L|",
        )
    )
    result = parse_lab_result(text)
    assert unmapped_codes(result, MAPPING) == []
    bundle = result_transaction_for(result, MAPPING)
    creatinine = entries_of(bundle, "Observation")[0]["resource"]
    assert creatinine["code"]["coding"] == [
        {
            "system": "http://loinc.org",
            "code": "2160-0",
            "display": "Creatinine [Mass/volume] in Serum or Plasma",
        },
        {"system": "urn:careweave:local-code:L", "code": "CREA", "display": "Creatinine"},
    ]
    unknown = parse_lab_result(text.replace("CREA^Creatinine^L", "ZZZ9^Mystery^L"))
    assert unmapped_codes(unknown, MAPPING) == ["L|ZZZ9"]


def test_alternate_local_coding_is_kept_beside_loinc() -> None:
    bundle = result_transaction_for(parse_lab_result(corpus("results/oru-r01-nist-1.hl7")), MAPPING)
    report_code = only(bundle, "DiagnosticReport")["resource"]["code"]["coding"]
    assert [(c["system"], c["code"]) for c in report_code] == [
        ("http://loinc.org", "10368-9"),
        ("urn:careweave:local-code:99USI", "3456543"),
    ]


# --- ServiceRequest -------------------------------------------------------------------------


def test_service_request_for_orm() -> None:
    order = parse_lab_order(corpus("orders/orm-o01-msfhirconv-1.hl7"))
    resource = service_request_for(order, MAPPING)
    ServiceRequest.model_validate(resource)
    assert resource["status"] == "active"
    assert resource["intent"] == "order"
    assert resource["priority"] == "routine"
    placer, filler = resource["identifier"]
    assert placer["type"]["coding"][0]["code"] == "PLAC"
    assert (placer["system"], placer["value"]) == ("urn:careweave:placer-order:GHHPlacer", "1101")
    assert (filler["system"], filler["value"]) == ("urn:careweave:filler-order:GHHFiller", "1201")
    assert resource["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "24725-4",
        "display": "CT Head",
    }
    assert resource["subject"] == {
        "identifier": {"system": "urn:careweave:patient-id:test1", "value": "PATID1234"}
    }
    assert resource["requester"]["identifier"]["value"] == "3850"
    assert resource["authoredOn"] == "2021-10-20T11:26:00+02:15"
    assert resource["meta"]["tag"] == [{"system": "urn:careweave:mapping", "code": "lab-v1"}]


def test_service_request_cancel_and_priority() -> None:
    text = corpus("orders/oml-o21-hapi-1.hl7")
    assert service_request_for(parse_lab_order(text), MAPPING)["priority"] == "asap"
    cancelled = parse_lab_order(
        text.replace("ORC|NW|", "ORC|CA|").replace("TQ1|||||||||A", "TQ1|||||||||S")
    )
    resource = service_request_for(cancelled, MAPPING)
    assert resource["status"] == "revoked"
    assert resource["priority"] == "stat"
    # Order code in CPT (C4), not LOINC: kept in its own system.
    assert resource["code"]["coding"] == [
        {
            "system": "http://www.ama-assn.org/go/cpt",
            "code": "82951",
            "display": "Glucose Tolerance Test",
        }
    ]


def test_naive_order_time_is_published_as_date_only() -> None:
    order = parse_lab_order(corpus("orders/orm-o01-lab-msfhirconv-1.hl7"))
    assert service_request_for(order, MAPPING)["authoredOn"] == "2014-10-06"


# --- result transaction ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in RESULT_FILES if n not in REFUSED])
def test_every_corpus_result_builds_a_valid_conditional_transaction(name: str) -> None:
    for result in parse_lab_results(corpus(name)):
        bundle = result_transaction_for(result, MAPPING)
        Bundle.model_validate(bundle)
        assert bundle["type"] == "transaction"
        types = [e["resource"]["resourceType"] for e in bundle["entry"]]
        specimen = ["Specimen"] if result.specimen else []
        assert types == [
            "DiagnosticReport",
            *specimen,
            *["Observation"] * len(result.observations),
            "Task",
        ]
        for entry in bundle["entry"]:
            kind = entry["resource"]["resourceType"]
            identifier = entry["resource"]["identifier"][0]
            assert entry["request"]["method"] == "PUT"
            assert unquote(entry["request"]["url"]) == (
                f"{kind}?identifier={identifier['system']}|{identifier['value']}"
            )
            # Identifiers come from order numbers, never from PHI.
            for phi in (result.patient.identifier, result.patient.family_name):
                assert not phi or phi not in identifier["value"]
        assert result_transaction_for(result, MAPPING) == bundle  # deterministic


def test_nist_lead_transaction_shape() -> None:
    result = parse_lab_result(corpus("results/oru-r01-nist-1.hl7"))
    bundle = result_transaction_for(result, MAPPING)
    report_entry = only(bundle, "DiagnosticReport")
    report = report_entry["resource"]
    assert report_entry["request"]["url"] == (
        "DiagnosticReport?identifier=urn%3Acareweave%3Alab-report%7Cfiller/Lab/9700123"
    )
    assert report["status"] == "final"
    assert report["basedOn"] == [
        {
            "type": "ServiceRequest",
            "identifier": {"system": "urn:careweave:filler-order:Lab", "value": "9700123"},
        }
    ]
    assert report["effectiveDateTime"] == "2008-08-15T10:30:00-07:00"
    observation_entry = only(bundle, "Observation")
    assert report["result"] == [{"reference": observation_entry["fullUrl"]}]
    lead = observation_entry["resource"]
    assert lead["status"] == "final"
    assert lead["valueQuantity"] == {
        "value": 50,
        "unit": "ug/dL",
        "system": "http://unitsofmeasure.org",
        "code": "ug/dL",
    }
    assert lead["interpretation"][0]["coding"][0]["code"] == "H"
    assert lead["referenceRange"][0]["high"]["value"] == 9
    task = only(bundle, "Task")["resource"]
    assert task["intent"] == "order"
    assert task["status"] == "requested"
    assert task["priority"] == "routine"
    assert task["focus"]["reference"] == report_entry["fullUrl"]
    assert task["owner"]["identifier"]["value"] == "1234"
    assert task["description"] == "Review lab result"


def test_corrected_result_updates_the_same_resources() -> None:
    original = result_transaction_for(
        parse_lab_result(corpus("results/oru-r01-nist-1.hl7")), MAPPING
    )
    corrected_result = parse_lab_result(corpus("results/oru-r01-nist-corrected-1.hl7"))
    corrected = result_transaction_for(corrected_result, MAPPING)
    assert [e["request"]["url"] for e in corrected["entry"]] == [
        e["request"]["url"] for e in original["entry"]
    ]
    assert [e["fullUrl"] for e in corrected["entry"]] == [e["fullUrl"] for e in original["entry"]]
    assert only(corrected, "DiagnosticReport")["resource"]["status"] == "corrected"
    lead = only(corrected, "Observation")["resource"]
    assert lead["status"] == "corrected"
    assert lead["valueQuantity"]["value"] == 25
    assert (lead["valueQuantity"]["unit"], lead["valueQuantity"]["code"]) == ("ug/dl", "ug/dL")
    assert only(corrected, "Task")["resource"]["description"] == "Review lab result (corrected)"


def test_critical_values_make_the_task_stat() -> None:
    cbc = parse_lab_result(corpus("results/oru-r01-lri-cbc-msfhirconv-1.hl7"))
    assert is_critical(cbc, MAPPING)
    assert only(result_transaction_for(cbc, MAPPING), "Task")["resource"]["priority"] == "stat"
    overridden = result_transaction_for(cbc, MAPPING, critical=False)
    assert only(overridden, "Task")["resource"]["priority"] == "routine"
    nist = parse_lab_result(corpus("results/oru-r01-nist-1.hl7"))
    assert not is_critical(nist, MAPPING)  # H is abnormal, not critical


def test_nonnumeric_values_in_fhir() -> None:
    result = parse_lab_result(corpus("adversarial/nonnumeric-nm-values.hl7"))
    bundle = result_transaction_for(result, MAPPING)
    creatinine, ast, glucose, potassium = (e["resource"] for e in entries_of(bundle, "Observation"))
    assert creatinine["valueQuantity"]["comparator"] == "<"
    assert creatinine["valueQuantity"]["value"] == 0.2
    assert ast["valueQuantity"]["comparator"] == ">"
    assert ast["interpretation"][0]["coding"][0]["code"] == "HH"
    assert "valueQuantity" not in glucose
    assert glucose["valueString"] == "see note"
    assert potassium["valueQuantity"] == {
        "value": 3,
        "comparator": "<",
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    }
    assert only(bundle, "Task")["resource"]["priority"] == "stat"


def test_unknown_units_stay_text_and_empty_obr25_uses_obx11() -> None:
    result = parse_lab_results(corpus("results/oru-r01-lab-msfhirconv-1.hl7"))[1]
    bundle = result_transaction_for(result, MAPPING)
    # OBR-25 empty, all OBX-11 = P
    assert only(bundle, "DiagnosticReport")["resource"]["status"] == "unknown"
    first = parse_lab_results(corpus("results/oru-r01-lab-msfhirconv-1.hl7"))[0]
    observations = entries_of(result_transaction_for(first, MAPPING), "Observation")
    assert observations[0]["resource"]["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert observations[0]["resource"]["status"] == "registered"  # OBX-11 = I
    assert observations[1]["resource"]["valueQuantity"]["code"] == "10*12/L"
    v24 = parse_lab_result(corpus("results/oru-r01-v24-pythonhl7-1.hl7"))
    assert (
        only(result_transaction_for(v24, MAPPING), "DiagnosticReport")["resource"]["status"]
        == "final"
    )


def test_repeated_code_observations_get_distinct_identifiers() -> None:
    result = parse_lab_result(corpus("results/oru-r01-nist-2.hl7"))
    values = [
        e["resource"]["identifier"][0]["value"]
        for e in entries_of(result_transaction_for(result, MAPPING), "Observation")
    ]
    assert values == [
        "filler/Lab/2233817/LN:6331-3/1",
        "filler/Lab/2233817/LN:20995-1/1",
        "filler/Lab/2233817/LN:17576-0/1",
    ]


# --- SLA escalation -------------------------------------------------------------------------


def test_escalation_task() -> None:
    order = parse_lab_order(corpus("orders/orm-o01-msfhirconv-1.hl7"))
    bundle = escalation_task_for(order, MAPPING)
    Bundle.model_validate(bundle)
    entry = only(bundle, "Task")
    task = entry["resource"]
    assert task["priority"] == "stat"
    assert task["description"] == "No final result within SLA"
    assert task["focus"] == {
        "type": "ServiceRequest",
        "identifier": {"system": "urn:careweave:placer-order:GHHPlacer", "value": "1101"},
    }
    assert task["owner"]["identifier"]["value"] == "3850"
    assert unquote(entry["request"]["url"]) == (
        "Task?identifier=urn:careweave:lab-sla-escalation-task|"
        "urn:careweave:placer-order:GHHPlacer|1101"
    )
    assert escalation_task_for(order, MAPPING) == bundle


# --- every bundle valid, every URI a URI ---------------------------------------------------

_URI = re.compile(r"\S+")  # FHIR `uri`: no whitespace; the R4B models check the same


def _uris(value: Any, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [uri for k, v in value.items() for uri in _uris(v, k)]
    if isinstance(value, list):
        return [uri for item in value for uri in _uris(item, key)]
    return [value] if key in ("system", "fullUrl", "url") and isinstance(value, str) else []


def test_a_sender_local_coding_system_with_spaces_becomes_a_valid_uri() -> None:
    assert MAPPING.system_uri("Local Lab") == "urn:careweave:local-code:Local%20Lab"
    assert MAPPING.system_uri("99USI") == "urn:careweave:local-code:99USI"
    assert MAPPING.system_uri("") == "urn:careweave:local-code:L"
    assert unquote(MAPPING.system_uri("Läbor 100%")).endswith("Läbor 100%")


@given(
    system=st.text(min_size=1, max_size=20).filter(
        lambda text: not any(c in text for c in "|^~\\&\r\n")
    ),
    code=st.from_regex(r"[A-Z0-9]{1,8}", fullmatch=True),
)
@settings(max_examples=60, deadline=None)
def test_every_result_bundle_validates_and_holds_only_valid_uris(system: str, code: str) -> None:
    order = sm.SampleOrder("URI-1", local_code=code, text="Some local test")
    line = sm.ResultValue(code, "Some local test", "7", "mg/dL", "1-9", "N", coding_system=system)
    text = sm.lab_result(order, "URI-1-R", [line, sm.SODIUM])
    bundle = result_transaction_for(parse_lab_result(text), MAPPING)
    Bundle.model_validate(bundle)
    for uri in _uris(bundle):
        assert _URI.fullmatch(uri), uri


def test_nte_comments_become_observation_notes_and_the_reports_note_extension() -> None:
    order = sm.SampleOrder("NTE-2")
    text = with_notes(sm.lab_result(order, "NTE-2-R", [sm.POTASSIUM, sm.SODIUM]))
    bundle = result_transaction_for(parse_lab_result(text), MAPPING)
    Bundle.model_validate(bundle)
    report = only(bundle, "DiagnosticReport")["resource"]
    assert report["extension"] == [
        {
            "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note",
            "valueAnnotation": {"text": "Specimen slightly hemolyzed\nRecollect if K high"},
        }
    ]
    first, second = (e["resource"] for e in entries_of(bundle, "Observation"))
    assert first["note"] == [{"text": "Verified by repeat & dilution\nCalled to ward"}]
    assert "note" not in second
    # The patient comment after PID is not a lab comment: it goes nowhere here.
    assert "morning draws" not in str(bundle)


# --- specimens ----------------------------------------------------------------------------


def test_a_v251_spm_becomes_the_specimen_of_the_report_and_its_observations() -> None:
    result = parse_lab_result(corpus("results/oru-r01-nist-1.hl7"))
    bundle = result_transaction_for(result, MAPPING)
    entry = only(bundle, "Specimen")
    specimen = entry["resource"]
    assert specimen["type"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "122554006",
        "display": "Capillary blood specimen",
    }
    assert specimen["collection"]["collectedDateTime"] == "2008-08-15T10:30:00-07:00"
    assert specimen["subject"] == only(bundle, "DiagnosticReport")["resource"]["subject"]
    reference = {"reference": entry["fullUrl"]}
    assert only(bundle, "DiagnosticReport")["resource"]["specimen"] == [reference]
    for observation in entries_of(bundle, "Observation"):
        assert observation["resource"]["specimen"] == reference
        assert (
            observation["resource"]["basedOn"]
            == (only(bundle, "DiagnosticReport")["resource"]["basedOn"])
        )


def test_a_v23_obr15_gives_type_body_site_collector_and_times() -> None:
    text = with_v23_specimen(sm.lab_result(sm.SampleOrder("SPC-23"), "SPC-23-R", [sm.SODIUM]))
    result = parse_lab_result(text)
    assert result.specimen is not None
    specimen = only(result_transaction_for(result, MAPPING), "Specimen")["resource"]
    assert specimen["type"]["coding"][0]["code"] == "BLD"
    assert specimen["type"]["text"] == "Blood"
    assert specimen["collection"]["bodySite"]["coding"][0]["code"] == "LACF"
    assert specimen["collection"]["collector"] == {"display": "Cara Collector"}
    assert specimen["collection"]["collectedDateTime"].startswith("2026-11-25")
    assert specimen["receivedTime"].startswith("2026-11-25")


def test_a_result_that_says_nothing_of_its_specimen_has_none() -> None:
    result = parse_lab_result(sm.lab_result(sm.SampleOrder("SPC-0"), "SPC-0-R", [sm.SODIUM]))
    assert result.specimen is None
    assert entries_of(result_transaction_for(result, MAPPING), "Specimen") == []


def test_the_performing_lab_and_the_results_interpreter_are_named() -> None:
    result = parse_lab_result(corpus("results/oru-r01-lri-cbc-msfhirconv-1.hl7"))
    bundle = result_transaction_for(result, MAPPING)
    report = only(bundle, "DiagnosticReport")["resource"]
    # MSH-4 sent the report; OBX-23 names the lab that ran each test.
    assert report["performer"] == [{"type": "Organization", "display": "NIST Lab Facility"}]
    for observation in entries_of(bundle, "Observation"):
        assert observation["resource"]["performer"] == [
            {"type": "Organization", "display": "Century Hospital"}
        ]

    order = sm.SampleOrder("INT-1")
    lines = sm.lab_result(order, "INT-1-R", [sm.SODIUM]).split("\r")
    obr_at = next(i for i, line in enumerate(lines) if line.startswith("OBR"))
    fields = lines[obr_at].split("|") + [""] * 33
    fields[32] = "4411&Reader&Rhea&&&Dr"
    lines[obr_at] = "|".join(fields[:33])
    result = parse_lab_result("\r".join(lines))
    assert result.results_interpreter == "Rhea Reader"
    report = only(result_transaction_for(result, MAPPING), "DiagnosticReport")["resource"]
    assert report["resultsInterpreter"] == [{"type": "Practitioner", "display": "Rhea Reader"}]


# --- concept map hygiene -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_concept_map_row_can_match_and_says_where_it_came_from(version: str) -> None:
    assert concept_map_problems(version) == []


def test_the_hygiene_check_names_each_kind_of_dead_or_untraceable_row() -> None:
    text = (
        "local_system,local_code,loinc_code,loinc_display,ucum_unit,source\n"
        "L,NA,2951-2,Sodium,mmol/L,sample feed\n"
        "L,NA,2951-2,Sodium again,mmol/L,sample feed\n"
        "LN,2951-2,2951-2,Sodium,mmol/L,sample feed\n"
        "L^X,K,2823-3,Potassium,mmol/L,sample feed\n"
        "L,GLU,2345,Glucose,mg/dL,\n"
    )
    problems = concept_rows_problems(text, "test.csv")
    assert [problem.split(":")[0] for problem in problems] == [
        "test.csv line 3",
        "test.csv line 4",
        "test.csv line 5",
        "test.csv line 6",
        "test.csv line 6",
    ]
    assert "repeats line 2" in problems[0]
    assert "LOINC-coded input" in problems[1]
    assert "can never come out of a CWE-3" in problems[2]
    assert "not a LOINC code" in problems[3] and "no source" in problems[4]
