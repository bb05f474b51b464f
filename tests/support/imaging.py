"""Driving imaging order-to-result as a hospital and a modality would: the RIS's ORM and
the radiology ORU (the lab samples with OBR-24 and OBR-18 set), and a modality that reads
its worklist entry with findscu and sends images made from it with storescu. Shared by
tests/integration/test_imaging_e2e.py and the history recorder."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydicom.dataset import Dataset

from exchanges.imaging_order import imaging_workflow_id
from tests.support.engine import Engine
from tests.support.modality import ScheduledPatient, find_worklist, series_files, store
from tests.support.orthanc import RunningOrthanc
from workers.modality import scheduled_patient
from workers.sample_messages import (
    RADIOLOGY_FINDING,
    ct_order,
    imaging_order_message,
    radiology_report_message,
    with_obr_field,
)

# The RIS's messages and the worklist reading live in workers/ (the demo sends them too).
__all__ = [
    "RADIOLOGY_FINDING",
    "acquire_series",
    "acquire_study",
    "ct_order",
    "imaging_exchange_id",
    "imaging_order_message",
    "radiology_report_message",
    "scheduled_patient",
    "with_obr_field",
    "with_visit_number",
    "worklist_answers",
]


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


def imaging_exchange_id(engine: Engine, accession: str) -> str:
    return imaging_workflow_id(accession, engine.settings.resolved_pseudonym_key())


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
