"""ADT mappings v1, v2 and v3 and the discharge FHIR builders on corpus and synthetic messages.

Every resource must validate as R4B (the builders check it too; checked again here).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import quote

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient
from pydantic import BaseModel

from adapters.hl7v2.adt_messages import parse_adt_event
from adapters.hl7v2.lab_messages import parse_lab_order
from mappings.discharge_sync.fhir_builders import encounter_transaction_for, patient_identifier
from mappings.discharge_sync.mapping import AdtMapping, available_versions, load_adt_mapping
from mappings.order_to_result.concept_map import load_lab_mapping
from mappings.order_to_result.fhir_builders import service_request_for
from models.discharge import DischargeOnRecord
from tests.unit.test_adt_messages import DG1_DIABETES, DISCHARGE_SYNC_FILES, adt, corpus

MAPPING = load_adt_mapping("v1")
V2 = load_adt_mapping("v2")
V3 = load_adt_mapping("v3")
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
MODELS: dict[str, type[BaseModel]] = {
    "Patient": Patient,
    "Encounter": Encounter,
    "Condition": Condition,
}


def build(message: str) -> dict[str, Any]:
    return encounter_transaction_for(parse_adt_event(message), MAPPING)


def entries_of(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def only(bundle: dict[str, Any], resource_type: str) -> dict[str, Any]:
    (entry,) = entries_of(bundle, resource_type)
    return entry


# --- mapping data ---------------------------------------------------------------------------


def test_mapping_is_versioned_tagged_and_cached() -> None:
    assert MAPPING.version == "v1"
    assert load_adt_mapping() is MAPPING
    assert MAPPING.mapping_tag_code == "adt-v1"
    assert available_versions() == ["v1", "v2", "v3"]
    assert V2.mapping_tag_code == "adt-v2"


def test_v2_is_v1_plus_the_discharge_kept_on_update() -> None:
    assert not MAPPING.update_keeps_discharge
    assert V2.update_keeps_discharge
    assert dataclasses.replace(V2, version="v1", mapping_tag_code="adt-v1") == (
        dataclasses.replace(MAPPING, update_keeps_discharge=True)
    )


@pytest.mark.parametrize("version", ["v9", "../lab/v2_to_fhir.v1", "V1", ""])
def test_unknown_mapping_version_is_a_clear_error(version: str) -> None:
    with pytest.raises(ValueError, match=r"unknown ADT mapping version .*known: v1, v2"):
        load_adt_mapping(version)


def test_mapping_tables_only_use_codes_their_fhir_systems_define() -> None:
    # R4 code systems: discharge-disposition, diagnosis-role, condition-ver-status.
    assert set(MAPPING.disposition_codes.values()) <= {
        "home",
        "alt-home",
        "other-hcf",
        "hosp",
        "long",
        "aadvice",
        "exp",
        "psy",
        "rehab",
        "snf",
        "oth",
    }
    assert set(MAPPING.diagnosis_use.values()) <= {
        "AD",
        "DD",
        "CC",
        "CM",
        "pre-op",
        "post-op",
        "billing",
    }
    assert set(MAPPING.verification.values()) <= {
        "unconfirmed",
        "provisional",
        "differential",
        "confirmed",
        "refuted",
        "entered-in-error",
    }
    assert MAPPING.disposition_system == DISPOSITION


def test_v2_tables_map_as_documented() -> None:
    assert {code: MAPPING.disposition_codes[code] for code in ("01", "02", "03", "07", "20")} == {
        "01": "home",
        "02": "other-hcf",
        "03": "snf",
        "07": "aadvice",
        "20": "exp",
    }
    assert [MAPPING.encounter_class(c).code for c in ("I", "O", "E", "Z")] == [
        "IMP",
        "AMB",
        "EMER",
        "UNK",
    ]
    assert [MAPPING.diagnosis_system(s) for s in ("I10", "I10C", "ICD10CM", "ICD-10-CM")] == [
        ICD10CM
    ] * 4
    assert MAPPING.diagnosis_system("i9c") == "http://hl7.org/fhir/sid/icd-9-cm"
    assert MAPPING.diagnosis_system("99LOCAL") is None


# --- the corpus -------------------------------------------------------------------------------

# Encounter.status each corpus file must give: A13 reopens; A08 is finished only
# when it carries a discharge time (PV1-45).
CORPUS_STATUS = {
    "adt-a03-hapi-1.hl7": "finished",
    "adt-a03-msfhirconv-1.hl7": "finished",
    "adt-a03-msfhirconv-2.hl7": "finished",
    "adt-a08-fhirconverter-2.hl7": "in-progress",
    "adt-a08-msfhirconv-1.hl7": "finished",
    "adt-a13-fhirconverter-2.hl7": "in-progress",
    "adt-a13-msfhirconv-1.hl7": "in-progress",
}


@pytest.mark.parametrize("name", DISCHARGE_SYNC_FILES)
def test_every_corpus_event_builds_a_valid_conditional_transaction(name: str) -> None:
    event = parse_adt_event(corpus(name))
    bundle = encounter_transaction_for(event, MAPPING)
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        MODELS[resource["resourceType"]].model_validate(resource)
        assert resource["meta"]["tag"] == [{"system": "urn:careweave:mapping", "code": "adt-v1"}]
        assert entry["request"]["method"] == "PUT"
        assert entry["request"]["url"].startswith(f"{resource['resourceType']}?identifier=")
        assert entry["fullUrl"].startswith("urn:uuid:")
    encounter = only(bundle, "Encounter")["resource"]
    assert encounter["status"] == CORPUS_STATUS[name]
    assert encounter["identifier"][0]["value"] == event.visit_number
    if encounter["status"] == "in-progress":
        assert "end" not in encounter.get("period", {})
        assert "hospitalization" not in encounter
    assert len(entries_of(bundle, "Condition")) == len(event.diagnoses)


def test_corpus_discharge_maps_identifiers_period_and_snomed_diagnosis() -> None:
    bundle = build(corpus("adt-a03-msfhirconv-1.hl7"))
    patient = only(bundle, "Patient")
    assert patient["resource"]["identifier"] == [
        {"system": "urn:careweave:patient-id:test1", "value": "PATID1234"}
    ]
    assert patient["request"]["url"] == (
        "Patient?identifier=urn%3Acareweave%3Apatient-id%3Atest1%7CPATID1234"
    )
    assert patient["resource"]["birthDate"] == "1988-08-18"
    assert patient["resource"]["gender"] == "male"
    encounter_entry = only(bundle, "Encounter")
    encounter = encounter_entry["resource"]
    assert encounter["identifier"] == [
        {"system": "urn:careweave:visit:AccMng", "value": "40007716"}
    ]
    assert encounter["period"] == {
        "start": "2015-02-08T11:34:19+01:10",
        "end": "2015-02-09T11:34:19+01:10",
    }
    # PV1-36 "Admitted as Inpatient" is no table 0112 code: text only, never guessed.
    assert encounter["hospitalization"]["dischargeDisposition"] == {"text": "Admitted as Inpatient"}
    assert encounter["class"]["code"] == "PRENC"  # PV1-2 P, preadmit
    assert encounter["subject"] == {"reference": patient["fullUrl"]}
    condition = only(bundle, "Condition")
    assert condition["resource"]["identifier"] == [
        {"system": "urn:careweave:encounter-diagnosis:AccMng", "value": "40007716-1"}
    ]
    assert condition["resource"]["code"]["coding"] == [
        {
            "system": "http://snomed.info/sct",
            "code": "422504002",
            "display": "Ischemic stroke(disorder)",
        }
    ]
    assert condition["resource"]["verificationStatus"]["coding"][0]["code"] == "provisional"
    assert condition["resource"]["recordedDate"] == "2004-01-25T11:40:25+04:20"
    assert condition["resource"]["encounter"] == {"reference": encounter_entry["fullUrl"]}
    assert encounter["diagnosis"] == [
        {
            "condition": {"reference": condition["fullUrl"]},
            "use": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                        "code": "AD",
                    }
                ]
            },
            "rank": 1,  # DG1-15
        }
    ]


def test_corpus_visit_without_authority_is_qualified_by_the_sending_facility() -> None:
    encounter = only(build(corpus("adt-a03-hapi-1.hl7")), "Encounter")
    assert encounter["resource"]["identifier"] == [
        {"system": "urn:careweave:visit:SANTER", "value": "2008003369"}
    ]
    # PV1-45 without an offset: the date only (see [time] in the TOML).
    assert encounter["resource"]["period"] == {"end": "2008-03-03"}


# --- synthetic: discharge, cancel, update ---------------------------------------------------


def test_discharge_is_finished_with_end_disposition_class_and_icd10cm() -> None:
    bundle = build(adt("A03"))
    encounter = only(bundle, "Encounter")["resource"]
    assert encounter["status"] == "finished"
    assert encounter["period"] == {"start": "2026-11-20", "end": "2026-11-25"}
    assert encounter["hospitalization"]["dischargeDisposition"] == {
        "coding": [{"system": DISPOSITION, "code": "home"}],
        "text": "01",
    }
    assert encounter["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "IMP",
    }
    assert encounter["location"] == [{"location": {"display": "W4 412 B GENHOSP"}}]
    participants = [
        (p["type"][0]["coding"][0]["code"], p["individual"].get("identifier"))
        for p in encounter["participant"]
    ]
    assert participants == [
        ("ATND", {"system": "urn:careweave:practitioner-id:NPI", "value": "1234567893"}),
        ("REF", {"system": "urn:careweave:practitioner-id:NPI", "value": "1122334455"}),
        ("ADM", {"system": "urn:careweave:practitioner-id", "value": "5566778899"}),
    ]
    assert encounter["participant"][0]["individual"]["display"] == "Marcus Welby"
    conditions = [e["resource"] for e in entries_of(bundle, "Condition")]
    assert [c["code"]["coding"] for c in conditions] == [
        [{"system": ICD10CM, "code": "I10", "display": "Essential (primary) hypertension"}],
        [
            {
                "system": ICD10CM,
                "code": "E11.9",
                "display": "Type 2 diabetes mellitus without complications",
            }
        ],
    ]
    assert [c["verificationStatus"]["coding"][0]["code"] for c in conditions] == [
        "provisional",
        "confirmed",
    ]
    assert [c["category"][0]["coding"][0]["code"] for c in conditions] == [
        "encounter-diagnosis"
    ] * 2
    assert [c["clinicalStatus"]["coding"][0]["code"] for c in conditions] == ["active"] * 2
    uses = [d["use"]["coding"][0]["code"] for d in encounter["diagnosis"]]
    assert uses == ["AD", "DD"]
    # Only the DG1 that carries DG1-15 is ranked.
    assert [d.get("rank") for d in encounter["diagnosis"]] == [1, None]


def test_discharge_without_pv1_45_ends_at_the_event_time() -> None:
    encounter = only(build(adt("A03", pv1_45="")), "Encounter")["resource"]
    assert encounter["status"] == "finished"
    assert encounter["period"]["end"] == "2026-11-25T09:46:00-05:00"  # EVN-2


def test_cancel_discharge_reopens_the_encounter_without_end_or_disposition() -> None:
    encounter = only(build(adt("A13", structure="ADT_A01")), "Encounter")["resource"]
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": "2026-11-20"}
    assert "hospitalization" not in encounter


def test_update_before_discharge_stays_in_progress() -> None:
    encounter = only(build(adt("A08", pv1_45="", pv1_36="")), "Encounter")["resource"]
    assert encounter["status"] == "in-progress"
    assert "end" not in encounter["period"]


def update_after_discharge(mapping: AdtMapping, **fields: Any) -> dict[str, Any]:
    """An A08 (amended DG1 2) from an exchange that delivered ``adt("A03")``."""
    discharge = parse_adt_event(adt("A03"))
    amended = DG1_DIABETES.replace("E11.9^Type 2 diabetes mellitus without", "E11.65^With")
    update = parse_adt_event(adt("A08", structure="ADT_A01", diagnoses=(amended,), **fields))
    event = update.model_copy(update={"discharge_on_record": DischargeOnRecord.of(discharge)})
    return only(encounter_transaction_for(event, mapping), "Encounter")["resource"]


def test_update_after_discharge_without_pv1_45_keeps_the_encounter_finished() -> None:
    encounter = update_after_discharge(V2, pv1_45="", pv1_36="")
    assert encounter["status"] == "finished"
    # The A03's end and disposition, not the A08's EVN-2: a full PUT must not drop them.
    assert encounter["period"] == {"start": "2026-11-20", "end": "2026-11-25"}
    assert encounter["hospitalization"]["dischargeDisposition"] == {
        "coding": [{"system": DISPOSITION, "code": "home"}],
        "text": "01",
    }
    assert encounter["meta"]["tag"][0]["code"] == "adt-v2"


def test_update_after_discharge_that_sends_pv1_45_and_36_wins_over_the_record() -> None:
    encounter = update_after_discharge(V2, pv1_45="20261126080000", pv1_36="03")
    assert encounter["status"] == "finished"
    assert encounter["period"]["end"] == "2026-11-26"
    assert encounter["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "snf"


def test_v1_ignores_the_record_as_it_always_did() -> None:
    # A resource tagged adt-v1 is what v1 made: in-progress, no end, no disposition.
    encounter = update_after_discharge(MAPPING, pv1_45="", pv1_36="")
    assert encounter["status"] == "in-progress"
    assert "end" not in encounter["period"]
    assert "hospitalization" not in encounter


def test_cancel_discharge_reopens_even_with_a_discharge_on_record() -> None:
    discharge = parse_adt_event(adt("A03"))
    cancel = parse_adt_event(adt("A13", structure="ADT_A01")).model_copy(
        update={"discharge_on_record": DischargeOnRecord.of(discharge)}
    )
    encounter = only(encounter_transaction_for(cancel, V2), "Encounter")["resource"]
    assert encounter["status"] == "in-progress"
    assert encounter["period"] == {"start": "2026-11-20"}
    assert "hospitalization" not in encounter


def test_update_before_any_discharge_stays_in_progress_in_v2() -> None:
    event = parse_adt_event(adt("A08", pv1_45="", pv1_36=""))
    encounter = only(encounter_transaction_for(event, V2), "Encounter")["resource"]
    assert encounter["status"] == "in-progress"
    assert "end" not in encounter["period"]


def test_amended_diagnosis_rewrites_the_same_condition() -> None:
    before = build(adt("A03"))
    amended = DG1_DIABETES.replace(
        "E11.9^Type 2 diabetes mellitus without complications",
        "E11.65^Type 2 diabetes mellitus with hyperglycemia",
    )
    after = build(adt("A08", structure="ADT_A01", diagnoses=(amended,)))
    old = entries_of(before, "Condition")[1]  # DG1 set id 2
    new = only(after, "Condition")
    assert new["request"]["url"] == old["request"]["url"]
    assert new["request"]["url"] == "Condition?identifier=" + quote(
        "urn:careweave:encounter-diagnosis:GENHOSP|V-77-2", safe=""
    )
    assert new["fullUrl"] == old["fullUrl"]
    assert old["resource"]["code"]["coding"][0]["code"] == "E11.9"
    assert new["resource"]["code"]["coding"] == [
        {
            "system": ICD10CM,
            "code": "E11.65",
            "display": "Type 2 diabetes mellitus with hyperglycemia",
        }
    ]
    # The A08 still reaches the same Patient and Encounter.
    for resource_type in ("Patient", "Encounter"):
        assert only(after, resource_type)["fullUrl"] == only(before, resource_type)["fullUrl"]
        assert (
            only(after, resource_type)["request"]["url"]
            == only(before, resource_type)["request"]["url"]
        )


def test_building_twice_gives_identical_json() -> None:
    first = json.dumps(build(adt("A03")), sort_keys=True)
    assert json.dumps(build(adt("A03")), sort_keys=True) == first
    # A different visit is a different encounter, not a collision.
    other = build(adt("A03", pv1_19="V-78^^^GENHOSP^VN"))
    assert only(other, "Encounter")["fullUrl"] != json.loads(first)["entry"][1]["fullUrl"]


def test_account_number_keys_the_encounter_within_the_sending_facility() -> None:
    bundle = build(adt("A03", pv1_19=""))
    assert only(bundle, "Encounter")["resource"]["identifier"] == [
        {"system": "urn:careweave:visit:GENHOSP", "value": "ACC900"}
    ]
    assert entries_of(bundle, "Condition")[0]["resource"]["identifier"][0]["value"] == "ACC900-1"


def test_unknown_coding_system_disposition_and_class_are_kept_as_text() -> None:
    message = adt(
        "A03", pv1_36="99", diagnoses=("DG1|1||X-17^Local fever code^99LOCAL||20261120|W",)
    ).replace("PV1|1|I|", "PV1|1|Z|")
    bundle = build(message)
    encounter = only(bundle, "Encounter")["resource"]
    assert encounter["hospitalization"]["dischargeDisposition"] == {"text": "99"}
    assert encounter["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
        "code": "UNK",
    }
    condition = only(bundle, "Condition")["resource"]
    assert condition["code"] == {"text": "Local fever code (99LOCAL X-17)"}
    # W (working) has no diagnosis-role code: no use, but a provisional status.
    assert "use" not in encounter["diagnosis"][0]
    assert condition["verificationStatus"]["coding"][0]["code"] == "provisional"
    assert condition["recordedDate"] == "2026-11-20"


def test_a_configured_offset_publishes_naive_times_with_their_time() -> None:
    mapping = dataclasses.replace(MAPPING, naive_timestamp_offset="-05:00")
    bundle = encounter_transaction_for(parse_adt_event(adt("A03")), mapping)
    assert only(bundle, "Encounter")["resource"]["period"] == {
        "start": "2026-11-20T10:15:00-05:00",
        "end": "2026-11-25T09:45:00-05:00",
    }


def test_the_patient_written_here_is_the_one_lab_resources_reference() -> None:
    # Lab ServiceRequests reference the Patient by identifier; discharge sync
    # must write the identifier they point at, or the two would never meet.
    order = parse_lab_order(
        "MSH|^~\\&|CAREEHR|GENHOSP|LABSYS|CENTRALLAB|20261125083000||ORM^O01^ORM_O01|O-1|P|2.5.1\r"
        "PID|1||SSN123^^^SSA^SS~MRN100234^^^GENHOSP^MR||Testpatient^Alma||19720415|F\r"
        "ORC|NW|P-1^GENHOSP|||||||20261125083000\r"
        "OBR|1|P-1^GENHOSP||BMP^Basic metabolic panel^L\r"
    )
    lab_subject = service_request_for(order, load_lab_mapping())["subject"]["identifier"]
    assert patient_identifier(parse_adt_event(adt()), MAPPING) == lab_subject


# --- v3: the Patient is created if absent, never written over ----------------------------


def test_v3_is_v2_except_how_the_patient_is_written() -> None:
    assert (V2.patient_write, V3.patient_write) == ("replace", "create-if-absent")
    assert MAPPING.patient_write == "replace"
    assert V3.mapping_tag_code == "adt-v3"
    assert (
        dataclasses.replace(V3, version="v2", mapping_tag_code="adt-v2", patient_write="replace")
        == V2
    )


def _retagged(value: Any) -> Any:
    """``value`` with its adt-v3 mapping tags read as adt-v2."""
    return json.loads(json.dumps(value).replace('"adt-v3"', '"adt-v2"'))


@pytest.mark.parametrize("name", DISCHARGE_SYNC_FILES)
def test_v3_creates_the_patient_if_absent_and_changes_nothing_else(name: str) -> None:
    event = parse_adt_event(corpus(name))
    v2 = encounter_transaction_for(event, V2)
    v3 = encounter_transaction_for(event, V3)
    Bundle.model_validate(v3)
    patient_v2, patient_v3 = only(v2, "Patient"), only(v3, "Patient")
    identifier = patient_v3["resource"]["identifier"][0]
    assert patient_v3["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": "identifier="
        + quote(f"{identifier['system']}|{identifier['value']}", safe="")
        # A Patient retired by a merge (active false) is not the one found.
        + "&active:not=false",
    }
    # Same Patient resource and fullUrl: the Encounter and Conditions still reference it.
    assert _retagged(patient_v3["resource"]) == patient_v2["resource"]
    assert patient_v3["fullUrl"] == patient_v2["fullUrl"]
    assert only(v3, "Encounter")["resource"]["subject"] == {"reference": patient_v3["fullUrl"]}
    assert _retagged(v3["entry"][1:]) == v2["entry"][1:]


def test_v3_queries_the_patient_by_the_identifier_it_would_have_put() -> None:
    bundle = encounter_transaction_for(parse_adt_event(corpus("adt-a03-msfhirconv-1.hl7")), V3)
    assert only(bundle, "Patient")["request"]["ifNoneExist"] == (
        # A Patient retired by a merge (active false) is not the one found.
        "identifier=urn%3Acareweave%3Apatient-id%3Atest1%7CPATID1234&active:not=false"
    )
