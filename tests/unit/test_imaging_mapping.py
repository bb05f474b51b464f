"""mappings/imaging_order: which orders are imaging, the context check, and DICOM headers
-> ImagingStudy + Endpoint (DICOMcast's shape), validated against R4."""

from __future__ import annotations

from datetime import date, datetime

from mappings.imaging_order.fhir_imaging import (
    context_mismatches,
    endpoint_for,
    imaging_study_for,
    is_imaging_order,
    modality_for,
    study_instance_uid_for,
    unordered_study_patient,
)
from mappings.imaging_order.mapping import load_imaging_mapping
from models.imaging import InstanceHeader, SeriesHeader, StudyHeader
from models.lab import PatientRef

MAPPING = load_imaging_mapping("v1")
CT = "1.2.840.10008.5.1.4.1.1.2"


def _header(**changes: object) -> StudyHeader:
    series = (
        SeriesHeader(
            series_instance_uid="1.2.3.1",
            series_number=1,
            modality="CT",
            body_part_examined="CHEST",
            instances=(
                InstanceHeader(sop_instance_uid="1.2.3.1.1", sop_class_uid=CT, instance_number=1),
                InstanceHeader(sop_instance_uid="1.2.3.1.2", sop_class_uid=CT, instance_number=2),
            ),
        ),
        SeriesHeader(
            series_instance_uid="1.2.3.2",
            series_number=2,
            modality="MR",
            instances=(InstanceHeader(sop_instance_uid="1.2.3.2.1", sop_class_uid=CT),),
        ),
    )
    fields: dict[str, object] = {
        "study_instance_uid": "1.2.3",
        "accession_number": "ACC1",
        "patient_id": "MRN1",
        "patient_family_name": "Lindqvist",
        "patient_given_name": "Åsa",
        "patient_birth_date": date(1961, 4, 2),
        "started": datetime(2026, 11, 20, 9, 30),
        "series": series,
    }
    fields.update(changes)
    return StudyHeader.model_validate(fields)


def test_imaging_orders_are_told_by_section_or_procedure_and_lab_ones_are_not() -> None:
    assert is_imaging_order("CT", "", MAPPING)
    assert is_imaging_order("rad", "", MAPPING)
    assert is_imaging_order("", "IMG-MR-BRAIN", MAPPING)
    assert not is_imaging_order("CH", "2823-3", MAPPING)
    assert not is_imaging_order("", "", MAPPING)
    assert modality_for("RAD", "IMG-MR-BRAIN", MAPPING) == "MR"
    assert modality_for("US", "", MAPPING) == "US"


def test_the_study_uid_of_an_accession_is_stable() -> None:
    assert study_instance_uid_for("ACC1", "RIS") == study_instance_uid_for("ACC1", "RIS")
    assert study_instance_uid_for("ACC1", "RIS") != study_instance_uid_for("ACC2", "RIS")


def test_imaging_study_follows_dicomcast() -> None:
    study = imaging_study_for(
        _header(),
        accession_number="ACC1",
        accession_issuer="RIS",
        subject_reference="Patient/7",
        service_request_reference="ServiceRequest/8",
        endpoint_reference="Endpoint/9",
        mapping=MAPPING,
    )
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}
    assert study["identifier"][1]["value"] == "ACC1"
    assert study["identifier"][1]["type"]["coding"][0]["code"] == "ACSN"
    assert study["basedOn"] == [{"reference": "ServiceRequest/8"}]
    assert study["started"] == "2026-11-20"
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 3)
    assert [m["code"] for m in study["modality"]] == ["CT", "MR"]
    first = study["series"][0]
    assert (first["uid"], first["number"], first["bodySite"]["code"]) == ("1.2.3.1", 1, "CHEST")
    assert first["instance"][1] == {
        "uid": "1.2.3.1.2",
        "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT}"},
        "number": 2,
    }
    endpoint = endpoint_for("http://127.0.0.1:8042/dicom-web/", MAPPING)
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"] == "http://127.0.0.1:8042/dicom-web"


def test_a_header_naming_another_patient_is_a_mismatch_by_field_name() -> None:
    patient = PatientRef(
        identifier="MRN1", family_name="LINDQVIST", given_name="Asa", birth_date=date(1961, 4, 2)
    )
    assert context_mismatches(_header(), patient) == []
    assert context_mismatches(_header(patient_id="MRN2"), patient) == ["PatientID"]
    assert context_mismatches(_header(patient_family_name="Berg"), patient) == ["PatientName"]
    assert context_mismatches(_header(patient_birth_date=date(1961, 4, 3)), patient) == [
        "PatientBirthDate"
    ]
    assert context_mismatches(_header(patient_birth_date=None), patient) == []


PATIENT_SYSTEM = "urn:careweave:patient-id"


def _patient(
    patient_id: str = "1",
    *,
    mrn: str = "MRN1",
    system: str = f"{PATIENT_SYSTEM}:HOSP",
    family: str = "Lindqvist",
    birth_date: str = "1961-04-02",
    **extra: object,
) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"system": system, "value": mrn}],
        "name": [{"family": family, "given": ["Åsa"]}],
        "birthDate": birth_date,
        **extra,
    }


def test_an_unordered_study_goes_to_the_one_patient_its_header_identifies() -> None:
    found, why = unordered_study_patient(_header(), [_patient()], PATIENT_SYSTEM)
    assert (found, why) == (_patient(), "")
    # A merged-away record keeps the number; the survivor holds it too: the survivor.
    retired = _patient("old", active=False)
    found, _ = unordered_study_patient(_header(), [retired, _patient("2")], PATIENT_SYSTEM)
    assert found is not None and found["id"] == "2"
    # The header names the issuer: only that issuer's identifier counts.
    other_issuer = _patient("3", system=f"{PATIENT_SYSTEM}:OTHER")
    found, _ = unordered_study_patient(
        _header(patient_id_issuer="HOSP"), [other_issuer, _patient()], PATIENT_SYSTEM
    )
    assert found is not None and found["id"] == "1"


def test_an_unordered_study_is_never_published_on_a_guess() -> None:
    def why(header: StudyHeader, patients: list[dict[str, object]]) -> str:
        found, reason = unordered_study_patient(header, patients, PATIENT_SYSTEM)
        assert found is None
        return reason

    assert why(_header(), []) == "no Patient has the study's PatientID"
    assert why(_header(), [_patient("1"), _patient("2", system=f"{PATIENT_SYSTEM}:X")]) == (
        "2 Patients have the study's PatientID"
    )
    # The same number as another kind of identifier (not a patient number) is no match.
    assert why(_header(), [_patient(system="urn:careweave:visit")]) == (
        "no Patient has the study's PatientID"
    )
    assert why(_header(patient_id=""), [_patient()]) == "the study's header has no PatientID"
    assert why(_header(patient_family_name=""), [_patient()]).startswith(
        "the study's header has no PatientName"
    )
    assert why(_header(), [_patient(family="Berg")]) == (
        "the Patient with the study's PatientID has another PatientName"
    )
    assert why(_header(), [_patient(birth_date="1961-04-03")]) == (
        "the Patient with the study's PatientID has another PatientBirthDate"
    )
    assert why(_header(), [_patient(name=[])]).endswith("has no name to confirm it with")
    assert why(_header(), [_patient(active=False)]) == "no Patient has the study's PatientID"


def test_a_study_without_an_accession_gets_no_accession_identifier() -> None:
    study = imaging_study_for(
        _header(accession_number=""),
        accession_number="",
        accession_issuer="",
        subject_reference="Patient/1",
        service_request_reference=None,
        endpoint_reference="Endpoint/e",
        mapping=MAPPING,
    )
    assert [i["system"] for i in study["identifier"]] == ["urn:dicom:uid"]
    assert "basedOn" not in study
