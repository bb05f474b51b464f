"""The modality in the imaging tests (workers/modality.py: dcmtk's findscu and storescu on
pydicom's test files), calling the tests' Orthanc as the AE title it lets in."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from tests.support.orthanc import MODALITY_AET, RunningOrthanc
from workers import modality
from workers.modality import ScheduledPatient, series_files

__all__ = ["ScheduledPatient", "find_worklist", "series_files", "store"]


def _address(orthanc: RunningOrthanc) -> modality.PacsAddress:
    return modality.PacsAddress("127.0.0.1", orthanc.dicom_port, orthanc.aet, MODALITY_AET)


def find_worklist(
    orthanc: RunningOrthanc, out_dir: Path, accession_number: str = ""
) -> list[Dataset]:
    """C-FIND on the Modality Worklist as a modality sends it; the answers as datasets."""
    return modality.find_worklist(_address(orthanc), out_dir, accession_number)


def store(orthanc: RunningOrthanc, files: list[Path]) -> None:
    """C-STORE the files to the PACS as the modality does."""
    modality.store(_address(orthanc), files)
