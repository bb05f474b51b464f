"""adapters/dicom against the real PACS: worklist files that dcmtk's findscu finds through
Orthanc's worklist plugin, images sent by storescu found again by DICOMweb (QIDO-RS by
accession, WADO-RS metadata) and announced by Orthanc's change feed."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from pathlib import Path

from pydicom.uid import generate_uid

from adapters.dicom import (
    DicomWebClient,
    OrthancClient,
    remove_worklist_entry,
    write_worklist_entry,
)
from models.imaging import WorklistEntry
from tests.support.modality import ScheduledPatient, find_worklist, series_files, store
from tests.support.orthanc import MODALITY_AET, RunningOrthanc

PATIENT = ScheduledPatient("IMG-7001", "Lindqvist", "Åsa", date(1961, 4, 2), "F")


def _entry(accession: str, study_uid: str) -> WorklistEntry:
    return WorklistEntry(
        accession_number=accession,
        patient_id=PATIENT.patient_id,
        patient_family_name=PATIENT.family_name,
        patient_given_name=PATIENT.given_name,
        patient_birth_date=PATIENT.birth_date,
        patient_sex=PATIENT.sex,
        study_instance_uid=study_uid,
        requested_procedure_id="RP1",
        requested_procedure_description="CT chest without contrast",
        modality="CT",
        scheduled_station_aet=MODALITY_AET,
        scheduled_start=datetime(2026, 11, 20, 9, 30),
    )


def test_findscu_sees_a_written_entry_and_not_a_removed_one(
    orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    write_worklist_entry(orthanc.worklist_dir, "wl-adapter-1", _entry("ACC-WL-1", study_uid))
    write_worklist_entry(orthanc.worklist_dir, "wl-adapter-1", _entry("ACC-WL-1", study_uid))
    found = find_worklist(orthanc, tmp_path / "q1", "ACC-WL-1")
    assert len(found) == 1
    answer = found[0]
    assert answer.PatientID == PATIENT.patient_id
    assert str(answer.PatientName) == "Lindqvist^Åsa"
    assert answer.PatientBirthDate == "19610402"
    assert answer.StudyInstanceUID == study_uid
    step = answer.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT"
    assert step.ScheduledStationAETitle == MODALITY_AET
    assert not [p for p in orthanc.worklist_dir.iterdir() if not p.name.endswith(".wl")]

    assert remove_worklist_entry(orthanc.worklist_dir, "wl-adapter-1")
    assert not remove_worklist_entry(orthanc.worklist_dir, "wl-adapter-1")
    assert find_worklist(orthanc, tmp_path / "q2", "ACC-WL-1") == []


async def test_stored_images_are_found_by_accession_with_their_headers_and_announced(
    orthanc: RunningOrthanc, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    common = {"patient": PATIENT, "accession_number": "ACC-WADO-1", "study_instance_uid": study_uid}
    files = series_files(tmp_path / "s1", series_number=1, instances=2, **common)
    files += series_files(
        tmp_path / "s2", series_number=2, instances=1, test_file="MR_small.dcm", **common
    )
    async with OrthancClient(orthanc.base_url, auth=orthanc.auth) as feed:
        start = (await feed.changes(since=0, limit=1000)).last
        await asyncio.to_thread(store, orthanc, files)
        stable: list[str] = []
        position = start
        for _ in range(300):  # StableAge is 2 s in tests; poll, no timed assertion
            page = await feed.changes(since=position, limit=100)
            position = page.last
            stable += [c.orthanc_id for c in page.changes if c.change_type == "StableStudy"]
            if stable:
                break
            await asyncio.sleep(0.2)
        assert len(stable) == 1
        assert await feed.study_instance_uid(stable[0]) == study_uid

    async with DicomWebClient(orthanc.dicomweb_url, auth=orthanc.auth) as dicomweb:
        assert await dicomweb.find_study_uids("ACC-WADO-1") == [study_uid]
        assert await dicomweb.find_study_uids("ACC-NOBODY") == []
        header = await dicomweb.study_headers(study_uid)
    assert header.accession_number == "ACC-WADO-1"
    assert header.patient_id == PATIENT.patient_id
    assert (header.patient_family_name, header.patient_given_name) == ("Lindqvist", "Åsa")
    assert header.patient_birth_date == PATIENT.birth_date
    assert [s.series_number for s in header.series] == [1, 2]
    assert [s.modality for s in header.series] == ["CT", "MR"]
    assert [len(s.instances) for s in header.series] == [2, 1]
    assert header.number_of_instances == 3
    assert [i.instance_number for i in header.series[0].instances] == [1, 2]
    assert header.series[0].instances[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
