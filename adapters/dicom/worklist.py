"""Modality worklist files: one ``.wl`` DICOM file per scheduled step, in the folder
Orthanc's worklist plugin answers C-FIND from (it re-reads the folder on every query).

Files are written whole under a temporary name and renamed, so a query never sees half a
file; the plugin reads only ``*.wl``. The file name is the caller's (a pseudonym), never
the accession number or any patient data.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from adapters.dicom.errors import PacsError
from models.imaging import WorklistEntry

# dcmtk's private "Modality Worklist Information" storage class, which dcmtk's own
# wlmscpfs files use too: a worklist file is no real SOP instance.
WORKLIST_FILE_SOP_CLASS = "1.2.276.0.7230010.3.1.0.1"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,120}$")


def worklist_dataset(entry: WorklistEntry) -> Dataset:
    """The worklist item (PS3.4 K.6.1.2): patient, requested procedure and one scheduled
    procedure step, UTF-8 (ISO_IR 192) so names keep their accents."""
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 192"
    item.AccessionNumber = entry.accession_number
    item.PatientID = entry.patient_id
    if entry.patient_id_issuer:
        item.IssuerOfPatientID = entry.patient_id_issuer
    item.PatientName = _person_name(entry.patient_family_name, entry.patient_given_name)
    item.PatientBirthDate = (
        entry.patient_birth_date.strftime("%Y%m%d") if entry.patient_birth_date else ""
    )
    item.PatientSex = entry.patient_sex
    item.StudyInstanceUID = entry.study_instance_uid
    item.RequestedProcedureID = entry.requested_procedure_id
    item.RequestedProcedureDescription = entry.requested_procedure_description
    if entry.requested_procedure_code:
        code = Dataset()
        code.CodeValue = entry.requested_procedure_code
        code.CodingSchemeDesignator = entry.requested_procedure_code_system or "L"
        code.CodeMeaning = entry.requested_procedure_description or entry.requested_procedure_code
        item.RequestedProcedureCodeSequence = Sequence([code])
    item.ReferringPhysicianName = _person_name(
        entry.referring_physician_family_name, entry.referring_physician_given_name
    )
    step = Dataset()
    step.Modality = entry.modality
    step.ScheduledStationAETitle = entry.scheduled_station_aet
    step.ScheduledProcedureStepStartDate = (
        entry.scheduled_start.strftime("%Y%m%d") if entry.scheduled_start else ""
    )
    step.ScheduledProcedureStepStartTime = (
        entry.scheduled_start.strftime("%H%M%S") if entry.scheduled_start else ""
    )
    step.ScheduledProcedureStepDescription = entry.requested_procedure_description
    step.ScheduledProcedureStepID = entry.requested_procedure_id
    item.ScheduledProcedureStepSequence = Sequence([step])
    return item


def _person_name(family: str, given: str) -> str:
    return f"{family}^{given}" if given else family


def write_worklist_entry(folder: Path, name: str, entry: WorklistEntry) -> Path:
    """Write (or replace) ``<folder>/<name>.wl`` atomically; the same entry twice is the
    same file, so a retried write is harmless."""
    target = _entry_path(folder, name)
    item = worklist_dataset(entry)
    item.file_meta = FileMetaDataset()
    item.file_meta.MediaStorageSOPClassUID = UID(WORKLIST_FILE_SOP_CLASS)
    item.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name])
    item.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            item.save_as(file, enforce_file_format=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise PacsError(f"the worklist entry could not be written: {err.strerror}") from err
    return target


def remove_worklist_entry(folder: Path, name: str) -> bool:
    """Remove the entry; False when it was not there (already removed: a retry)."""
    try:
        _entry_path(folder, name).unlink()
    except FileNotFoundError:
        return False
    return True


def _entry_path(folder: Path, name: str) -> Path:
    if not _SAFE_NAME.match(name):
        raise ValueError("a worklist entry name is letters, digits, '.', '_' or '-' only")
    return folder / f"{name}.wl"
