"""ADT parsing and the discharge FHIR builders: pure functions, on the corpus and on
synthetic messages. Every resource must validate as R4B (the builders check it too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.hl7v2.adt_events import AdtMessageInvalid, parse_adt_event
from mappings.discharge.fhir_builders import encounter_transaction_for
from mappings.discharge.mapping import load_discharge_mapping
from models.discharge import AdtTrigger
from workers import sample_messages as sm

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus" / "adt"
MAPPING = load_discharge_mapping("v1")


def corpus(name: str) -> str:
    return (CORPUS / name).read_bytes().decode("utf-8")


def entries(bundle: dict[str, object], resource_type: str) -> list[dict[str, object]]:
    return [
        e
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == resource_type  # type: ignore[index,union-attr]
    ]


def test_corpus_discharge_reads_visit_account_and_diagnosis() -> None:
    event = parse_adt_event(corpus("adt-a03-msfhirconv-1.hl7"))
    assert event.trigger is AdtTrigger.DISCHARGE
    assert event.visit_number == "40007716"
    assert event.account_number == "4000776"
    assert [(d.code, d.coding_system, d.diagnosis_type) for d in event.diagnoses] == [
        ("422504002", "SCT", "A")
    ]
    assert event.discharge_time is not None
    assert event.discharge_time.isoformat().startswith("2015-02-09T11:34:19")


@pytest.mark.parametrize(
    "name",
    [
        "adt-a03-hapi-1.hl7",
        "adt-a03-msfhirconv-2.hl7",
        "adt-a08-fhirconverter-2.hl7",
        "adt-a08-msfhirconv-1.hl7",
        "adt-a13-fhirconverter-2.hl7",
        "adt-a13-msfhirconv-1.hl7",
    ],
)
def test_every_corpus_adt_event_builds_a_valid_transaction(name: str) -> None:
    event = parse_adt_event(corpus(name))
    bundle = encounter_transaction_for(event, MAPPING)
    [encounter] = entries(bundle, "Encounter")
    expected = "in-progress" if event.trigger is AdtTrigger.CANCEL_DISCHARGE else "finished"
    assert encounter["resource"]["status"] == expected  # type: ignore[index]
    assert len(entries(bundle, "Condition")) == len(event.diagnoses)


def test_synthetic_discharge_maps_disposition_class_participants_and_icd10() -> None:
    event = parse_adt_event(sm.adt_event(sm.SampleStay("V-77"), "C-1", "A03"))
    bundle = encounter_transaction_for(event, MAPPING)
    [encounter_entry] = entries(bundle, "Encounter")
    encounter = encounter_entry["resource"]
    assert encounter["status"] == "finished"  # type: ignore[index]
    assert encounter["period"] == {"start": "2026-11-20", "end": "2026-11-25"}  # type: ignore[index]
    assert encounter["class"]["code"] == "IMP"  # type: ignore[index]
    disposition = encounter["hospitalization"]["dischargeDisposition"]  # type: ignore[index]
    assert disposition["coding"][0]["code"] == "home"
    roles = [p["type"][0]["coding"][0]["code"] for p in encounter["participant"]]  # type: ignore[index]
    assert roles == ["ATND", "REF", "ADM"]
    conditions = [e["resource"] for e in entries(bundle, "Condition")]
    assert [c["code"]["coding"][0] for c in conditions] == [  # type: ignore[index]
        {
            "system": "http://hl7.org/fhir/sid/icd-10-cm",
            "code": "I10",
            "display": "Essential (primary) hypertension",
        },
        {
            "system": "http://hl7.org/fhir/sid/icd-10-cm",
            "code": "E11.9",
            "display": "Type 2 diabetes mellitus without complications",
        },
    ]
    uses = [d["use"]["coding"][0]["code"] for d in encounter["diagnosis"]]  # type: ignore[index]
    assert uses == ["AD", "DD"]
    # Writes are conditional on identifiers, never plain creates.
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])  # type: ignore[index,union-attr]
    assert encounter_entry["request"]["url"].startswith("Encounter?identifier=")  # type: ignore[index]


def test_cancel_discharge_reopens_the_encounter() -> None:
    event = parse_adt_event(sm.adt_event(sm.SampleStay("V-78"), "C-2", "A13"))
    [encounter] = entries(encounter_transaction_for(event, MAPPING), "Encounter")
    resource = encounter["resource"]
    assert resource["status"] == "in-progress"  # type: ignore[index]
    assert "end" not in resource.get("period", {})  # type: ignore[union-attr]
    assert "hospitalization" not in resource  # type: ignore[operator]


def test_amended_diagnosis_updates_the_same_condition() -> None:
    stay = sm.SampleStay("V-79")
    amended = sm.SampleStay(
        "V-79",
        diagnoses=(
            stay.diagnoses[0],
            sm.SampleDiagnosis("2", "E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
        ),
    )
    before = entries(
        encounter_transaction_for(parse_adt_event(sm.adt_event(stay, "C-3", "A03")), MAPPING),
        "Condition",
    )
    after = entries(
        encounter_transaction_for(parse_adt_event(sm.adt_event(amended, "C-4", "A08")), MAPPING),
        "Condition",
    )
    assert [e["request"]["url"] for e in before] == [e["request"]["url"] for e in after]  # type: ignore[index]
    assert [e["fullUrl"] for e in before] == [e["fullUrl"] for e in after]
    assert after[1]["resource"]["code"]["coding"][0]["code"] == "E11.65"  # type: ignore[index]


def test_building_twice_gives_identical_json() -> None:
    event = parse_adt_event(sm.adt_event(sm.SampleStay("V-80"), "C-5", "A03"))
    first = json.dumps(encounter_transaction_for(event, MAPPING), sort_keys=True)
    assert json.dumps(encounter_transaction_for(event, MAPPING), sort_keys=True) == first


def test_unknown_coding_system_is_kept_as_text_not_guessed() -> None:
    message = sm.adt_event(sm.SampleStay("V-81"), "C-6", "A03").replace("^I10|", "^LOCALDX|")
    conditions = entries(encounter_transaction_for(parse_adt_event(message), MAPPING), "Condition")
    assert all("coding" not in c["resource"]["code"] for c in conditions)  # type: ignore[index,operator]
    assert conditions[0]["resource"]["code"]["text"].startswith("I10 ")  # type: ignore[index]


def test_escapes_are_resolved_and_lf_separators_accepted() -> None:
    patient = sm.SamplePatient(family="O\\T\\Brien")
    message = sm.adt_event(sm.SampleStay("V-82", patient=patient), "C-7", "A03")
    event = parse_adt_event(message.replace("\r", "\n"))
    assert event.patient.family_name == "O&Brien"
    assert event.visit_number == "V-82"


@pytest.mark.parametrize(
    ("change", "segment", "field"),
    [
        (lambda m: "\r".join(s for s in m.split("\r") if not s.startswith("PV1")), "PV1", None),
        (lambda m: m.replace("DG1|1||I10^", "DG1|1||^"), "DG1", 3),
        (lambda m: m.replace("|V-83^^^GENHOSP^VN|", "||"), "PV1", 19),
        (lambda m: m.replace("|20261125094500", "|2026139"), "PV1", 45),
    ],
)
def test_unusable_messages_are_refused_naming_segment_and_field(
    change: object, segment: str, field: int | None
) -> None:
    message = sm.adt_event(sm.SampleStay("V-83"), "C-8", "A03")
    with pytest.raises(AdtMessageInvalid) as caught:
        parse_adt_event(change(message))  # type: ignore[operator]
    assert (caught.value.segment_id, caught.value.field_position) == (segment, field)
    assert "V-83" not in str(caught.value)  # no values (PHI) in the error


def test_unknown_mapping_version_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no discharge mapping version 'v9'"):
        load_discharge_mapping("v9")
