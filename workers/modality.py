"""A modality for the demo and the imaging tests: dcmtk's findscu (worklist query) and
storescu (sending images), with pydicom's own test files rewritten for the scheduled
patient and accession. Not part of the engine: it plays the other side of the PACS, as
partners/ plays the MLLP partners."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid


@dataclass(frozen=True)
class PacsAddress:
    """Where the modality's DICOM associations go, and the AE titles on either side."""

    host: str
    dicom_port: int
    called_aet: str
    calling_aet: str


def _dcmtk(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise RuntimeError(f"{tool} is missing: apt-get install dcmtk (`make demo` does it)")
    return found


def dcmtk_installed() -> bool:
    return all(shutil.which(tool) for tool in ("findscu", "storescu"))


def find_worklist(pacs: PacsAddress, out_dir: Path, accession_number: str = "") -> list[Dataset]:
    """C-FIND on the Modality Worklist as a modality sends it; the answers as datasets."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    keys = [
        f"AccessionNumber={accession_number}",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "RequestedProcedureDescription",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    ]
    command = [
        _dcmtk("findscu"),
        "-W",
        "-aet",
        pacs.calling_aet,
        "-aec",
        pacs.called_aet,
        "-X",
        "-od",
        str(out_dir),
    ]
    for key in keys:
        command += ["-k", key]
    command += [pacs.host, str(pacs.dicom_port)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return [pydicom.dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm"))]


@dataclass(frozen=True)
class ScheduledPatient:
    patient_id: str
    family_name: str
    given_name: str
    birth_date: date
    sex: str


def scheduled_patient(answer: Dataset) -> ScheduledPatient:
    """The patient as the modality takes it from its worklist answer."""
    family, _, given = str(answer.PatientName).partition("^")
    return ScheduledPatient(
        patient_id=str(answer.PatientID),
        family_name=family,
        given_name=given,
        birth_date=datetime.strptime(str(answer.PatientBirthDate), "%Y%m%d").date(),
        sex=str(answer.PatientSex),
    )


def series_files(
    folder: Path,
    *,
    patient: ScheduledPatient,
    accession_number: str,
    study_instance_uid: str,
    series_number: int,
    instances: int,
    test_file: str = "CT_small.dcm",
) -> list[Path]:
    """One series of ``instances`` images made from one of pydicom's test files, with the
    patient, accession and study the worklist gave, and fresh series and instance uids."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    written: list[Path] = []
    for number in range(1, instances + 1):
        dataset = pydicom.dcmread(str(get_testdata_file(test_file)))
        dataset.PatientID = patient.patient_id
        dataset.PatientName = f"{patient.family_name}^{patient.given_name}"
        dataset.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
        dataset.PatientSex = patient.sex
        dataset.AccessionNumber = accession_number
        dataset.StudyInstanceUID = study_instance_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.SeriesNumber = series_number
        dataset.InstanceNumber = number
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = folder / f"s{series_number}-i{number}.dcm"
        dataset.save_as(path)
        written.append(path)
    return written


def store(pacs: PacsAddress, files: list[Path]) -> None:
    """C-STORE the files to the PACS as the modality does."""
    command = [_dcmtk("storescu"), "-aet", pacs.calling_aet, "-aec", pacs.called_aet]
    command += [pacs.host, str(pacs.dicom_port), *map(str, files)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
