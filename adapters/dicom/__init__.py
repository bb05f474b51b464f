"""DICOM I/O, no Temporal: worklist files (pydicom), DICOMweb (QIDO-RS, WADO-RS metadata)
and Orthanc's change feed, both through httpx. Pixel data never passes through here."""

from adapters.dicom.dicomweb import DicomWebClient
from adapters.dicom.errors import PacsError, PacsRejected, PacsUnavailable
from adapters.dicom.orthanc import OrthancClient, StudyGone
from adapters.dicom.study_headers import StudyMetadataInvalid, read_study_headers
from adapters.dicom.worklist import remove_worklist_entry, write_worklist_entry

__all__ = [
    "DicomWebClient",
    "OrthancClient",
    "PacsError",
    "PacsRejected",
    "PacsUnavailable",
    "StudyGone",
    "StudyMetadataInvalid",
    "read_study_headers",
    "remove_worklist_entry",
    "write_worklist_entry",
]
