"""A study's header metadata (DICOM JSON, PS3.18 F.2, as WADO-RS metadata answers it) read
with pydicom into a StudyHeader: uids, patient, series and instances. Bulk data (pixel
data) is never fetched: its BulkDataURI is ignored."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from adapters.dicom.errors import PacsError
from models.imaging import InstanceHeader, SeriesHeader, StudyHeader


class StudyMetadataInvalid(PacsError, ValueError):
    """The metadata lacks what identifies a study, series or instance (names the attribute)."""


def _no_bulk_data(*_: object) -> bytes:
    return b""


def read_study_headers(instances: Iterable[dict[str, Any]]) -> StudyHeader:
    """One StudyHeader from the metadata of a study's instances (any order). Series and
    instances are sorted by number then uid, so the same study reads the same whatever
    order the PACS answered in."""
    datasets = [Dataset.from_json(item, bulk_data_uri_handler=_no_bulk_data) for item in instances]
    if not datasets:
        raise StudyMetadataInvalid("the study has no instances")
    first = datasets[0]
    study_uid = _text(first, "StudyInstanceUID")
    if not study_uid:
        raise StudyMetadataInvalid("StudyInstanceUID (0020,000D) is missing")
    series_of: dict[str, list[Dataset]] = {}
    for dataset in datasets:
        series_uid = _text(dataset, "SeriesInstanceUID")
        if not series_uid or not _text(dataset, "SOPInstanceUID"):
            raise StudyMetadataInvalid("an instance lacks SeriesInstanceUID or SOPInstanceUID")
        series_of.setdefault(series_uid, []).append(dataset)
    name = first.get("PatientName")
    person = PersonName(name) if name is not None else PersonName("")
    series = [_series(uid, members) for uid, members in series_of.items()]
    series.sort(
        key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid)
    )
    return StudyHeader(
        study_instance_uid=study_uid,
        accession_number=_text(first, "AccessionNumber"),
        patient_id=_text(first, "PatientID"),
        patient_id_issuer=_text(first, "IssuerOfPatientID"),
        patient_family_name=str(person.family_name or ""),
        patient_given_name=str(person.given_name or ""),
        patient_birth_date=_date(_text(first, "PatientBirthDate")),
        patient_sex=_text(first, "PatientSex"),
        started=_datetime(_text(first, "StudyDate"), _text(first, "StudyTime")),
        description=_text(first, "StudyDescription"),
        series=tuple(series),
    )


def _series(uid: str, members: list[Dataset]) -> SeriesHeader:
    first = members[0]
    instances = sorted(
        {
            _text(d, "SOPInstanceUID"): InstanceHeader(
                sop_instance_uid=_text(d, "SOPInstanceUID"),
                sop_class_uid=_text(d, "SOPClassUID"),
                instance_number=_integer(d.get("InstanceNumber")),
            )
            for d in members
        }.values(),
        key=lambda i: (i.instance_number is None, i.instance_number or 0, i.sop_instance_uid),
    )
    return SeriesHeader(
        series_instance_uid=uid,
        series_number=_integer(first.get("SeriesNumber")),
        modality=_text(first, "Modality"),
        body_part_examined=_text(first, "BodyPartExamined"),
        description=_text(first, "SeriesDescription"),
        instances=tuple(instances),
    )


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def _integer(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _date(text: str) -> date | None:
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _datetime(day: str, time: str) -> datetime | None:
    found = _date(day)
    if found is None:
        return None
    digits = time.split(".")[0]
    try:
        hour, minute, second = int(digits[0:2] or 0), int(digits[2:4] or 0), int(digits[4:6] or 0)
        return datetime(found.year, found.month, found.day, hour, minute, second)
    except ValueError:
        return datetime(found.year, found.month, found.day)
