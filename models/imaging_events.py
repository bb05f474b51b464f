"""Signals of imaging order-to-result that do not come from HL7: a study became stable."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StudyStable(BaseModel):
    """Orthanc's StableStudy change for a study: no image arrived for StableAge seconds.
    ``change_seq`` is the feed position: a study that gets a late series is stable again
    under a new seq, and a repeat of the same seq is a duplicate."""

    model_config = ConfigDict(frozen=True)

    change_seq: int
    study_instance_uid: str
    accession_number: str
