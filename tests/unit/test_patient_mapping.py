"""Patient mapping v1 and the merge: what a message replaces, adds, removes, and leaves alone.

Every Patient built or merged must validate as R4B (the functions check it too).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir.resources.R4B.patient import Patient

from adapters.hl7v2.adt_messages import parse_adt_event
from adapters.hl7v2.lab_messages import parse_lab_order, parse_patient
from adapters.hl7v2.person_messages import parse_person_update
from mappings.discharge_sync.fhir_builders import patient_identifier
from mappings.discharge_sync.mapping import load_adt_mapping
from mappings.order_to_result.concept_map import load_lab_mapping
from mappings.order_to_result.fhir_builders import service_request_for
from mappings.patient_sync.fhir_patient import (
    PatientChanges,
    PatientInvalid,
    merge_patient,
    new_patient,
    patient_changes,
)
from mappings.patient_sync.mapping import available_versions, load_patient_mapping
from tests.support.patient_sync import PATIENT_SYSTEM, Person, person_message
from tests.unit.test_adt_messages import CORPUS
from workers import sample_messages as sm

MAPPING = load_patient_mapping("v1")
ALMA = Person("MRN8101", other_identifiers="999-00-8101^^^SSA^SS")


def changes_of(person: Person, trigger: str = "A31") -> PatientChanges:
    return patient_changes(parse_person_update(person_message(person, "PM-1", trigger)), MAPPING)


def registered_elsewhere() -> dict[str, Any]:
    """A Patient as the server holds it after other sources wrote it (ids as a server sets)."""
    return {
        "resourceType": "Patient",
        "id": "p-8101",
        "meta": {
            "versionId": "3",
            "lastUpdated": "2026-11-30T08:00:00.000Z",
            "tag": [{"system": "urn:example:source", "code": "portal"}],
        },
        "identifier": [
            {"system": PATIENT_SYSTEM, "value": "MRN8101"},
            {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "REG-8101"},
        ],
        "name": [
            {"family": "Oldname", "given": ["Alma"]},
            {"use": "nickname", "given": ["Almie"]},
        ],
        "birthDate": "1972-04-15",
        "gender": "female",
        "address": [
            {"use": "home", "line": ["1 Old Rd"], "city": "Springfield"},
            {"use": "work", "line": ["100 Main St"], "city": "Springfield"},
        ],
        "telecom": [
            {"system": "phone", "value": "+1 555 0100", "use": "mobile"},
            {"system": "email", "value": "alma@portal.example", "use": "home"},
            {"system": "phone", "value": "+1 (217) 5550000", "use": "home"},
        ],
        "link": [{"other": {"reference": "Patient/p-old"}, "type": "replaces"}],
        "extension": [{"url": "urn:example:preferred-pharmacy", "valueString": "Main St Pharmacy"}],
    }


# --- the mapping data --------------------------------------------------------------------


def test_mapping_is_versioned_and_tagged() -> None:
    assert available_versions() == ["v1"]
    assert MAPPING.mapping_tag_code == "patient-sync-v1"
    assert load_patient_mapping() is MAPPING
    with pytest.raises(ValueError, match=r"unknown patient mapping version 'v9'; known: v1"):
        load_patient_mapping("v9")


def test_tables_only_use_codes_their_fhir_value_sets_define() -> None:
    assert set(MAPPING.administrative_sex.values()) <= {"male", "female", "other", "unknown"}
    name_uses = {"usual", "official", "temp", "nickname", "anonymous", "old", "maiden"}
    assert set(MAPPING.name_use.values()) | {MAPPING.first_name_use} <= name_uses
    address_uses = {"home", "work", "temp", "old", "billing"}
    assert set(MAPPING.address_use.values()) <= address_uses
    contact_uses = {"home", "work", "temp", "old", "mobile"}
    assert (
        set(MAPPING.telecom_use.values())
        | set(MAPPING.telecom_default_use.values())
        | set(MAPPING.telecom_use_by_equipment.values())
    ) <= contact_uses
    assert set(MAPPING.telecom_system.values()) | set(MAPPING.telecom_system_by_use.values()) <= {
        "phone",
        "fax",
        "email",
        "pager",
        "url",
        "sms",
        "other",
    }


# --- the message as FHIR elements --------------------------------------------------------


def test_a28_becomes_a_complete_r4_patient() -> None:
    person = ALMA.with_(
        name="Testpatient^Alma^B^^Ms~Tess^Al^^^^^N",
        home_phone="^PRN^PH^^1^217^5550100~^NET^Internet^alma@example.org~^PRN^CP^^^217^5550111",
        business_phone="^WPN^PH^^^217^5550199^12",
    )
    patient = new_patient(changes_of(person, "A28"))
    Patient.model_validate(patient)
    assert patient["identifier"] == [
        {
            "system": PATIENT_SYSTEM,
            "value": "MRN8101",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                ]
            },
        },
        {
            "system": "urn:careweave:patient-id:SSA",
            "value": "999-00-8101",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}
                ]
            },
        },
    ]
    assert patient["name"] == [
        {"use": "official", "family": "Testpatient", "given": ["Alma", "B"], "prefix": ["Ms"]},
        {"use": "nickname", "family": "Tess", "given": ["Al"]},
    ]
    assert (patient["birthDate"], patient["gender"]) == ("1972-04-15", "female")
    assert patient["address"] == [
        {
            "use": "home",
            "line": ["12 Elm St", "Apt 3"],
            "city": "Springfield",
            "state": "IL",
            "postalCode": "62701",
            "country": "USA",
        }
    ]
    assert patient["telecom"] == [
        {"system": "phone", "value": "+1 (217) 5550100", "use": "home"},
        {"system": "email", "value": "alma@example.org", "use": "home"},
        {"system": "phone", "value": "(217) 5550111", "use": "mobile"},
        {"system": "phone", "value": "(217) 5550199 ext. 12", "use": "work"},
    ]
    assert patient["meta"] == {
        "tag": [{"system": "urn:careweave:mapping", "code": "patient-sync-v1"}]
    }


def test_the_patient_found_is_the_one_discharges_and_lab_results_reach() -> None:
    # One identifier rule (mappings/fhir_identifiers.py) for all three exchanges.
    pid = "PID|1||SSN123^^^SSA^SS~MRN100234^^^GENHOSP^MR||Testpatient^Alma||19720415|F"
    person_update = parse_person_update(
        "MSH|^~\\&|REG|GENHOSP|CW|GENHOSP|20261201||ADT^A31^ADT_A05|P-1|P|2.5.1\r"
        f"EVN|A31|20261201\r{pid}\r"
    )
    a03 = sm.adt_event(sm.SampleStay("V-1"), "D-1", "A03").split("\r")
    discharge = parse_adt_event("\r".join(pid if s.startswith("PID|") else s for s in a03))
    order = parse_lab_order(
        "MSH|^~\\&|CAREEHR|GENHOSP|LABSYS|CENTRALLAB|20261125083000||ORM^O01^ORM_O01|O-1|P|2.5.1\r"
        f"{pid}\rORC|NW|P-1^GENHOSP|||||||20261125083000\rOBR|1|P-1^GENHOSP||BMP^Basic^L\r"
    )
    key = patient_changes(person_update, MAPPING).key_identifier
    assert key == patient_identifier(discharge, load_adt_mapping("v3"))
    assert key == service_request_for(order, load_lab_mapping())["subject"]["identifier"]
    assert key == {"system": "urn:careweave:patient-id:GENHOSP", "value": "MRN100234"}


def test_unmapped_sex_and_untyped_names_and_addresses() -> None:
    changes = changes_of(
        ALMA.with_(sex="A", name="Testpatient^Alma~Other^Name", address="1 Main St^^Town^^^^ZZ")
    )
    assert changes.gender == ""
    # The first untyped name is the legal one (HL7 v2.4+); the second stays without use.
    assert changes.names == [
        {"use": "official", "family": "Testpatient", "given": ["Alma"]},
        {"family": "Other", "given": ["Name"]},
    ]
    assert changes.addresses == [{"line": ["1 Main St"], "city": "Town"}]


# --- real messages: the PIDs of the public ADT samples, sent as A31 ---------------------

ADT_CORPUS = sorted(path.name for path in CORPUS.glob("adt-a*.hl7"))


def as_a31(name: str) -> str:
    text = (CORPUS / name).read_bytes().decode("utf-8").replace("\r\n", "\r").replace("\n", "\r")
    msh, rest = text.split("\r", 1)
    fields = msh.split("|")
    fields[8] = "ADT^A31^ADT_A05"
    return "\r".join(["|".join(fields), rest])


@pytest.mark.parametrize("name", ADT_CORPUS)
def test_corpus_pids_become_valid_patients_found_by_the_same_identifier(name: str) -> None:
    update = parse_person_update(as_a31(name))
    patient = new_patient(patient_changes(update, MAPPING))
    Patient.model_validate(patient)
    read_by_lab = parse_patient(as_a31(name))
    assert patient["identifier"][0]["value"] == read_by_lab.identifier
    assert merge_patient(patient, patient_changes(update, MAPPING)) == patient


def test_corpus_pid_with_typed_names_mailing_address_and_xtn_12() -> None:
    patient = new_patient(
        patient_changes(parse_person_update(as_a31("adt-a01-msfhirconv-1.hl7")), MAPPING)
    )
    # XPN-7 D (display) and L (legal); PID-3 MR with a CX-4 of subcomponents (namespace).
    assert [(n.get("use"), n["family"]) for n in patient["name"]] == [
        ("usual", "EVERYMAN"),
        ("official", "Josh"),
    ]
    assert patient["identifier"][0]["system"] == "urn:careweave:patient-id:test1"
    # XAD-7 M (mailing) has no Address.use; XAD-9 "&W" has no county code.
    assert patient["address"] == [
        {
            "line": ["1000", "Ste. 123"],
            "city": "Ann Arbor",
            "state": "MI",
            "postalCode": "99999",
            "country": "USA",
        }
    ]
    # XTN-12 wins over XTN-7 and XTN-1; CP is a mobile phone; TDD is "other".
    assert patient["telecom"][0] == {"system": "phone", "value": "2222", "use": "mobile"}
    assert {"system": "other", "value": "1111", "use": "work"} in patient["telecom"]


# --- the merge ---------------------------------------------------------------------------


def test_a31_replaces_name_and_address_and_keeps_what_others_wrote() -> None:
    current = registered_elsewhere()
    merged = merge_patient(
        current,
        changes_of(
            ALMA.with_(
                name="Newname^Alma",
                address="7 New Ave^^Shelbyville^IL^62565^USA^H",
                home_phone="",
                birth_date="",
                sex="",
            )
        ),
    )
    # What the message speaks for: the legal name (the server's untyped one counts as it)
    # and the home address.
    assert merged["name"] == [
        {"use": "official", "family": "Newname", "given": ["Alma"]},
        {"use": "nickname", "given": ["Almie"]},
    ]
    assert merged["address"] == [
        {
            "use": "home",
            "line": ["7 New Ave"],
            "city": "Shelbyville",
            "state": "IL",
            "postalCode": "62565",
            "country": "USA",
        },
        {"use": "work", "line": ["100 Main St"], "city": "Springfield"},
    ]
    # Identifiers are added, never replaced.
    assert merged["identifier"] == [
        *current["identifier"],
        {
            "system": "urn:careweave:patient-id:SSA",
            "value": "999-00-8101",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}
                ]
            },
        },
    ]
    # Empty fields erase nothing; what no PID field speaks for is untouched.
    for element in ("telecom", "birthDate", "gender", "link", "extension", "id"):
        assert merged[element] == current[element], element
    assert merged["meta"]["tag"] == [
        {"system": "urn:example:source", "code": "portal"},
        {"system": "urn:careweave:mapping", "code": "patient-sync-v1"},
    ]
    assert current == registered_elsewhere()  # the input is not modified


def test_telecom_is_replaced_per_system_and_use() -> None:
    merged = merge_patient(
        registered_elsewhere(), changes_of(ALMA.with_(home_phone="^PRN^PH^^1^217^5550222"))
    )
    # The new home phone replaces the old home phone, in its place; the mobile phone and
    # the home email are other slots.
    assert merged["telecom"] == [
        {"system": "phone", "value": "+1 555 0100", "use": "mobile"},
        {"system": "email", "value": "alma@portal.example", "use": "home"},
        {"system": "phone", "value": "+1 (217) 5550222", "use": "home"},
    ]


def test_explicit_nulls_remove_only_what_the_mapping_says() -> None:
    merged = merge_patient(
        registered_elsewhere(),
        changes_of(ALMA.with_(name='""', birth_date='""', sex='""', address='""', home_phone='""')),
    )
    assert "birthDate" not in merged and "gender" not in merged
    # PID-11 "": home addresses (and untyped ones) go, the work address stays.
    assert merged["address"] == [{"use": "work", "line": ["100 Main St"], "city": "Springfield"}]
    # PID-13 "": home telecom goes (phone and email), the mobile stays.
    assert merged["telecom"] == [{"system": "phone", "value": "+1 555 0100", "use": "mobile"}]
    # PID-5 "" deletes no name.
    assert merged["name"] == registered_elsewhere()["name"]


def test_removing_the_last_entry_removes_the_element() -> None:
    current = registered_elsewhere()
    current["telecom"] = [{"system": "phone", "value": "+1 (217) 5550000", "use": "home"}]
    merged = merge_patient(current, changes_of(ALMA.with_(home_phone='""')))
    assert "telecom" not in merged
    Patient.model_validate(merged)


@pytest.mark.parametrize(
    "person",
    [
        ALMA,
        ALMA.with_(name="Newname^Alma", address='""', home_phone='""', sex="M"),
        ALMA.with_(name="A^B~C^D~E^F^^^^^N", home_phone="~^NET^Internet^a@b.example~"),
    ],
)
def test_merging_twice_changes_nothing_the_second_time(person: Person) -> None:
    changes = changes_of(person)
    for start in (registered_elsewhere(), {"resourceType": "Patient"}):
        once = merge_patient(start, changes)
        assert merge_patient(copy.deepcopy(once), changes) == once
    assert merge_patient(new_patient(changes), changes) == new_patient(changes)


def test_an_invalid_merge_names_the_element_not_the_value() -> None:
    current = registered_elsewhere()
    current["birthDate"] = "15/04/1972 Secretvalue"
    changes = changes_of(ALMA.with_(birth_date=""))
    with pytest.raises(PatientInvalid) as refused:
        merge_patient(current, changes)
    assert "birthDate" in str(refused.value)
    assert "Secretvalue" not in str(refused.value)
