"""ADT^A03 / ^A13 / ^A08 -> AdtEvent, by splitting on the message's own delimiters.

hl7apy is not used here: discharge sync needs a handful of PID/PV1/DG1 fields, and a full
hl7apy parse costs 30+ ms per message (bench/parse.py). Values are unescaped and kept
verbatim otherwise; errors name the segment and field, never a value (no PHI).
"""

from __future__ import annotations

from datetime import datetime

from adapters.hl7v2.lab_messages import (
    LabMessageInvalid,
    _at,
    _components,
    _Delimiters,
    _delimiters,
    _hd_name,
    _hd_sub_name,
    _patient,
    _Segment,
    _segments_by_splitting,
    _split_lines,
    _subcomponents,
    _timestamp,
    _unescape,
)
from models.discharge import AdtEvent, AdtTrigger, Diagnosis, Practitioner
from models.lab import StructuralProblem

__all__ = ["AdtMessageInvalid", "parse_adt_event"]


class AdtMessageInvalid(ValueError):
    """The message cannot be used as a discharge-sync event (AE, or a reviewer)."""

    def __init__(self, segment_id: str, field_position: int | None, text: str) -> None:
        self.segment_id = segment_id
        self.field_position = field_position
        self.text = text
        where = segment_id if field_position is None else f"{segment_id}-{field_position}"
        super().__init__(f"{where}: {text}")

    @property
    def problem(self) -> StructuralProblem:
        return StructuralProblem(
            segment_id=self.segment_id, field_position=self.field_position, text=self.text
        )


def parse_adt_event(text: str) -> AdtEvent:
    lines = _split_lines(text.replace("\r\n", "\r").replace("\n", "\r"))
    if not lines or not lines[0].startswith("MSH"):
        raise AdtMessageInvalid("MSH", None, "message does not start with MSH")
    try:
        d = _delimiters(lines[0])
    except LabMessageInvalid as err:
        raise AdtMessageInvalid(err.segment_id, err.field_position, err.text) from err
    segments = _segments_by_splitting([line for line in lines if line[3:4] == d.field], d)
    msh = segments[0]
    message_type = _components(msh.raw(9), d)
    if _unescape(_at(message_type, 1), d) != "ADT":
        raise AdtMessageInvalid("MSH", 9, "not an ADT message")
    try:
        trigger = AdtTrigger(_unescape(_at(message_type, 2), d))
    except ValueError:
        raise AdtMessageInvalid("MSH", 9, "trigger event is not A03, A13 or A08") from None
    pid = _first(segments, "PID")
    pv1 = _first(segments, "PV1")
    evn = next((s for s in segments if s.name == "EVN"), None)
    try:
        patient = _patient([pid], d)
    except LabMessageInvalid as err:
        raise AdtMessageInvalid(err.segment_id, err.field_position, err.text) from err

    visit = _components(pv1.raw(19), d)
    visit_number = _unescape(_at(visit, 1), d).strip()
    account_number = _unescape(_at(_components(pid.raw(18), d), 1), d).strip()
    if not visit_number and not account_number and trigger is not AdtTrigger.UPDATE:
        raise AdtMessageInvalid(
            "PV1", 19, "neither a visit number (PV1-19) nor an account number (PID-18)"
        )
    location = _components(pv1.raw(3), d)
    return AdtEvent(
        trigger=trigger,
        control_id=_unescape(msh.raw(10), d),
        sending_facility=_hd_name(msh.raw(4), d),
        event_time=(_time(evn, 2, d) if evn else None) or _time(msh, 7, d),
        patient=patient,
        visit_number=visit_number,
        visit_number_authority=_hd_sub_name(_at(visit, 4), d),
        account_number=account_number,
        patient_class=_unescape(_at(_components(pv1.raw(2), d), 1), d),
        location=" ".join(
            _unescape(_at(_subcomponents(part, d), 1), d) for part in location[:3] if part
        ),
        location_facility=_hd_sub_name(_at(location, 4), d),
        attending=_practitioner(pv1.raw(7), d),
        referring=_practitioner(pv1.raw(8), d),
        admitting=_practitioner(pv1.raw(17), d),
        discharge_disposition=_unescape(_at(_components(pv1.raw(36), d), 1), d),
        admit_time=_time(pv1, 44, d),
        discharge_time=_time(pv1, 45, d),
        diagnoses=tuple(_diagnosis(s, d) for s in segments if s.name == "DG1"),
    )


def _first(segments: list[_Segment], name: str) -> _Segment:
    found = next((s for s in segments if s.name == name), None)
    if found is None:
        raise AdtMessageInvalid(name, None, f"{name} segment missing")
    return found


def _time(segment: _Segment, position: int, d: _Delimiters) -> datetime | None:
    raw = segment.raw(position)
    if not _at(_components(raw, d), 1).strip():
        return None
    value = _timestamp(raw, d)
    if value is None:
        raise AdtMessageInvalid(segment.name, position, "not a valid HL7 date/time")
    return value


def _practitioner(raw: str, d: _Delimiters) -> Practitioner | None:
    parts = _components(raw, d)
    identifier = _unescape(_at(parts, 1), d).strip()
    family = _unescape(_at(_subcomponents(_at(parts, 2), d), 1), d)
    if not identifier and not family:
        return None
    return Practitioner(
        identifier=identifier,
        family_name=family,
        given_name=_unescape(_at(parts, 3), d),
        assigning_authority=_hd_sub_name(_at(parts, 9), d),
    )


def _diagnosis(dg1: _Segment, d: _Delimiters) -> Diagnosis:
    coded = _components(dg1.raw(3), d)
    code = _unescape(_at(coded, 1), d).strip()
    if not code:
        raise AdtMessageInvalid("DG1", 3, "diagnosis without a code")
    return Diagnosis(
        set_id=_unescape(dg1.raw(1), d).strip() or "1",
        code=code,
        display=_unescape(_at(coded, 2), d) or _unescape(dg1.raw(4), d),
        coding_system=_unescape(_at(coded, 3), d),
        diagnosis_type=_unescape(_at(_components(dg1.raw(6), d), 1), d),
        recorded_at=_time(dg1, 5, d),
    )
