"""Driving imaging order-to-result as a hospital and a modality would: the RIS's ORM and
the radiology ORU (the lab samples with OBR-24 and OBR-18 set), and a modality that reads
its worklist entry with findscu and sends images made from it with storescu. Shared by
tests/integration/test_imaging_e2e.py and the history recorder."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset

from exchanges.imaging_order import imaging_workflow_id
from tests.support.engine import Engine
from tests.support.modality import ScheduledPatient, find_worklist, series_files, store
from tests.support.orthanc import RunningOrthanc
from workers import sample_messages as sm

# A narrative radiology finding, LOINC-coded (no local code to map or review).
RADIOLOGY_FINDING = sm.ResultValue(
    "18782-3",
    "Radiology Study observation (narrative)",
    "No acute cardiopulmonary findings.",
    "",
    "",
    value_type="TX",
    coding_system="LN",
)


def with_obr_field(text: str, position: int, value: str) -> str:
    segments = text.split("\r")
    for index, segment in enumerate(segments):
        if segment.startswith("OBR|"):
            fields = segment.split("|")
            fields += [""] * (position + 1 - len(fields))
            fields[position] = value
            segments[index] = "|".join(fields)
    return "\r".join(segments)


def with_visit_number(text: str, visit_number: str) -> str:
    """The message with PV1-19 (the visit the order was placed in) set."""
    segments = text.split("\r")
    for index, segment in enumerate(segments):
        if segment.startswith("PV1|"):
            fields = segment.split("|")
            fields += [""] * (20 - len(fields))
            fields[19] = visit_number
            segments[index] = "|".join(fields)
    return "\r".join(segments)


def ct_order(placer_order_number: str, mrn: str) -> sm.SampleOrder:
    return sm.SampleOrder(
        placer_order_number,
        local_code="CTCHEST",
        text="CT chest without contrast",
        patient=sm.SamplePatient(mrn=mrn),
    )


def imaging_order_message(
    order: sm.SampleOrder, accession: str, control_id: str, *, order_control: str = "NW"
) -> str:
    """The RIS's ORM^O01: OBR-24 CT (an imaging section), the accession in OBR-18."""
    text = sm.lab_order(order, control_id, order_control=order_control)
    return with_obr_field(with_obr_field(text, 24, "CT"), 18, accession)


def radiology_report_message(order: sm.SampleOrder, accession: str, control_id: str) -> str:
    """The radiologist's final ORU^R01 for the same accession (OBR-24 RAD)."""
    text = sm.lab_result(order, control_id, [RADIOLOGY_FINDING])
    return with_obr_field(with_obr_field(text, 24, "RAD"), 18, accession)


def imaging_exchange_id(engine: Engine, accession: str) -> str:
    return imaging_workflow_id(accession, engine.settings.resolved_pseudonym_key())


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


async def worklist_answers(orthanc: RunningOrthanc, folder: Path, accession: str) -> list[Dataset]:
    return await asyncio.to_thread(find_worklist, orthanc, folder, accession)


def _exam(answer: Dataset, patient: ScheduledPatient | None) -> dict[str, object]:
    return {
        "patient": patient or scheduled_patient(answer),
        "accession_number": str(answer.AccessionNumber),
        "study_instance_uid": str(answer.StudyInstanceUID),
    }


async def acquire_series(
    orthanc: RunningOrthanc, folder: Path, answer: Dataset, *, series_number: int, instances: int
) -> None:
    """One more CT series for the worklist answer's study (a late acquisition)."""
    files = series_files(
        folder, series_number=series_number, instances=instances, **_exam(answer, None)
    )
    await asyncio.to_thread(store, orthanc, files)


async def acquire_study(
    orthanc: RunningOrthanc,
    folder: Path,
    answer: Dataset,
    *,
    patient: ScheduledPatient | None = None,
) -> None:
    """The modality's exam: a CT series of two images and an MR series of one, for the
    worklist answer's study and accession (``patient`` overrides who the images name)."""
    common = _exam(answer, patient)
    files = series_files(folder / "s1", series_number=1, instances=2, **common)
    files += series_files(
        folder / "s2", series_number=2, instances=1, test_file="MR_small.dcm", **common
    )
    await asyncio.to_thread(store, orthanc, files)
