"""The modality in the imaging tests: dcmtk's findscu (worklist query) and storescu
(sending images), with pydicom's own test files rewritten for the scheduled patient and
accession. Nothing here is Careweave's code: it is the other side of the PACS."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support.orthanc import MODALITY_AET, RunningOrthanc


def _dcmtk(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise RuntimeError(f"{tool} is missing: apt-get install dcmtk (`make test` does it)")
    return found


def find_worklist(
    orthanc: RunningOrthanc, out_dir: Path, accession_number: str = ""
) -> list[Dataset]:
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
        MODALITY_AET,
        "-aec",
        orthanc.aet,
        "-X",
        "-od",
        str(out_dir),
    ]
    for key in keys:
        command += ["-k", key]
    command += ["127.0.0.1", str(orthanc.dicom_port)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return [pydicom.dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm"))]


@dataclass(frozen=True)
class ScheduledPatient:
    patient_id: str
    family_name: str
    given_name: str
    birth_date: date
    sex: str


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


def store(orthanc: RunningOrthanc, files: list[Path]) -> None:
    """C-STORE the files to the PACS as the modality does."""
    command = [_dcmtk("storescu"), "-aet", MODALITY_AET, "-aec", orthanc.aet]
    command += ["127.0.0.1", str(orthanc.dicom_port), *map(str, files)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
