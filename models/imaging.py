"""Canonical models of imaging order-to-result: the worklist entry a modality reads, the
header metadata of a stored study, and Orthanc's change-feed page. All PHI except uids and
Orthanc ids: they live in (encrypted) payloads, never in ids, logs or search attributes.
Pixel data has no field anywhere: only uids and header metadata cross Temporal."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WorklistEntry(_Frozen):
    """One scheduled procedure step as a DICOM Modality Worklist item (PS3.4 K.6)."""

    accession_number: str
    patient_id: str
    patient_id_issuer: str = ""
    patient_family_name: str = ""
    patient_given_name: str = ""
    patient_birth_date: date | None = None
    patient_sex: str = ""
    # Pre-assigned so the modality's images carry it (IHE scheduled workflow).
    study_instance_uid: str
    requested_procedure_id: str
    requested_procedure_code: str = ""
    requested_procedure_code_system: str = ""
    requested_procedure_description: str = ""
    modality: str
    scheduled_station_aet: str = ""
    scheduled_start: datetime | None = None
    referring_physician_family_name: str = ""
    referring_physician_given_name: str = ""


class InstanceHeader(_Frozen):
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None = None


class SeriesHeader(_Frozen):
    series_instance_uid: str
    series_number: int | None = None
    modality: str = ""
    body_part_examined: str = ""
    description: str = ""
    instances: tuple[InstanceHeader, ...] = ()


class StudyHeader(_Frozen):
    """What a study's DICOM headers say, read from WADO-RS metadata (no pixel data)."""

    study_instance_uid: str
    accession_number: str = ""
    patient_id: str = ""
    patient_id_issuer: str = ""
    patient_family_name: str = ""
    patient_given_name: str = ""
    patient_birth_date: date | None = None
    patient_sex: str = ""
    started: datetime | None = None
    description: str = ""
    series: tuple[SeriesHeader, ...] = ()

    @property
    def number_of_instances(self) -> int:
        return sum(len(series.instances) for series in self.series)


class PacsChange(_Frozen):
    """One entry of Orthanc's change feed (GET /changes)."""

    seq: int
    change_type: str
    resource_type: str
    orthanc_id: str


class PacsChangePage(_Frozen):
    changes: tuple[PacsChange, ...]
    # The feed's position after this page: the next ``since``.
    last: int
    done: bool
