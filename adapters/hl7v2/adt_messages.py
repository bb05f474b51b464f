"""ADT^A03 (discharge), ^A13 (cancel discharge), ^A08 (update) -> AdtEvent.

Runs inside an activity, never in workflow code. The message is read by splitting on
its own MSH-1/MSH-2 delimiters, not with hl7apy: discharge sync reads a handful of
MSH/EVN/PID/PV1/DG1 fields, and a full hl7apy parse costs 30+ ms per message
(bench/). Fields are read with ``adapters.hl7v2.fields``, the project's one field
reader, and the patient with the lab parser's ``read_patient``, so both exchanges read
a field, and a patient, the same way.

Errors name the segment and field only, never a value: they go into Temporal failure
messages and logs, which must carry no PHI.
"""

from __future__ import annotations

from datetime import datetime

from adapters.hl7v2.fields import (
    Delimiters,
    Segment,
    at,
    components,
    date_value,
    delimiters_from_msh,
    hd_name,
    nested_hd_name,
    person,
    read_segments,
    split_segments,
    subcomponents,
    timestamp,
    unescape_text,
)
from adapters.hl7v2.lab_messages import LabMessageInvalid, read_patient
from models.discharge import AdtEvent, AdtTrigger, Diagnosis, Practitioner
from models.errors import Hl7Error
from models.lab import PatientRef, StructuralProblem

__all__ = ["AdtMessageInvalid", "parse_adt_event"]


class AdtMessageInvalid(Hl7Error, ValueError):
    """The message cannot be used as a discharge-sync event (answer AE, or send to review).

    The text names the segment and field only; it never carries a value, so it is
    safe for Temporal failure messages and logs (no PHI).
    """

    def __init__(self, segment_id: str, field_position: int | None, text: str) -> None:
        self.segment_id = segment_id
        self.field_position = field_position
        self.text = text
        where = segment_id if field_position is None else f"{segment_id}-{field_position}"
        super().__init__(f"{where}: {text}")

    @property
    def problem(self) -> StructuralProblem:
        """The same facts as a serializable model, for an activity result or a review item."""
        return StructuralProblem(
            segment_id=self.segment_id, field_position=self.field_position, text=self.text
        )

    @classmethod
    def from_lab(cls, err: LabMessageInvalid) -> AdtMessageInvalid:
        return cls(err.segment_id, err.field_position, err.text)


def parse_adt_event(text: str) -> AdtEvent:
    """The discharge-sync event of one decoded ADT^A03/^A13/^A08 (CR, LF or CRLF separated)."""
    # The gateway normalises to CR, but files and replays may still carry LF/CRLF.
    lines = split_segments(text.replace("\r\n", "\r").replace("\n", "\r"))
    if not lines or not lines[0].startswith("MSH"):
        raise AdtMessageInvalid("MSH", None, "message does not start with MSH")
    d = delimiters_from_msh(lines[0])
    if d is None:
        raise AdtMessageInvalid("MSH", 2, "encoding characters missing")
    # A line whose fourth character is not the field separator is not a segment
    # (e.g. a wrapped continuation); it carries nothing discharge sync reads.
    segments = read_segments(lines, d)
    msh = segments[0]
    trigger = _trigger(msh, d)
    pid = _required(segments, "PID")
    pv1 = _required(segments, "PV1")
    evn = _optional(segments, "EVN")

    visit = components(pv1.raw(19), d)
    visit_number = unescape_text(at(visit, 1), d).strip()
    account_number = unescape_text(at(components(pid.raw(18), d), 1), d).strip()
    if not visit_number and not account_number:
        # The encounter is keyed by its number; without one an A03 could only be
        # matched to a stay by guessing (patient + dates).
        raise AdtMessageInvalid(
            "PV1", 19, "neither a visit number (PV1-19) nor an account number (PID-18)"
        )
    location = components(pv1.raw(3), d)
    return AdtEvent(
        trigger=trigger,
        control_id=unescape_text(msh.raw(10), d).strip(),
        sending_facility=hd_name(msh.raw(4), d).strip(),
        event_time=(_time(evn, 2, d) if evn else None) or _time(msh, 7, d),
        patient=_read_patient(pid, d),
        visit_number=visit_number,
        visit_number_authority=nested_hd_name(at(visit, 4), d).strip(),
        account_number=account_number,
        patient_class=_first_component(pv1.raw(2), d),
        # PL: point of care ^ room ^ bed ^ facility (HD); later components (status,
        # building, floor) are not what a receiving clinician needs to find the stay.
        location=" ".join(
            part
            for part in (
                unescape_text(at(subcomponents(at(location, i), d), 1), d).strip()
                for i in (1, 2, 3, 4)
            )
            if part
        ),
        location_facility=nested_hd_name(at(location, 4), d).strip(),
        attending=_practitioner(pv1.raw(7), d),
        referring=_practitioner(pv1.raw(8), d),
        admitting=_practitioner(pv1.raw(17), d),
        discharge_disposition=_first_component(pv1.raw(36), d),
        admit_time=_time(pv1, 44, d),
        discharge_time=_time(pv1, 45, d),
        diagnoses=_diagnoses(segments, d),
    )


def _trigger(msh: Segment, d: Delimiters) -> AdtTrigger:
    # MSH-9 is message code ^ trigger event ^ structure; A08 and A13 are often
    # sent with structure ADT_A01, so only components 1 and 2 decide.
    message_type = components(msh.raw(9), d)
    if unescape_text(at(message_type, 1), d).strip() != "ADT":
        raise AdtMessageInvalid("MSH", 9, "not an ADT message")
    try:
        return AdtTrigger(unescape_text(at(message_type, 2), d).strip())
    except ValueError:
        raise AdtMessageInvalid("MSH", 9, "trigger event is not A03, A13 or A08") from None


def _optional(segments: list[Segment], name: str) -> Segment | None:
    return next((s for s in segments if s.name == name), None)


def _required(segments: list[Segment], name: str) -> Segment:
    found = _optional(segments, name)
    if found is None:
        raise AdtMessageInvalid(name, None, f"{name} segment missing")
    return found


def _first_component(raw: str, d: Delimiters) -> str:
    return unescape_text(at(components(raw, d), 1), d).strip()


def _time(segment: Segment, position: int, d: Delimiters) -> datetime | None:
    """DTM (first component): empty gives None, anything unreadable is refused.

    A discharge time that cannot be read would otherwise turn into "no discharge
    time" and close the encounter at the wrong moment.
    """
    raw = segment.raw(position)
    if not at(components(raw, d), 1).strip():
        return None
    value = timestamp(raw, d)
    if value is None:
        raise AdtMessageInvalid(segment.name, position, "not a valid HL7 date/time")
    return value


def _read_patient(pid: Segment, d: Delimiters) -> PatientRef:
    # The same PID reading as the lab exchange (MR preferred in PID-3), so a
    # Patient written here is the one lab results reference by identifier.
    try:
        patient = read_patient([pid], d)
    except LabMessageInvalid as err:
        raise AdtMessageInvalid.from_lab(err) from err
    if _first_component(pid.raw(7), d) and date_value(pid.raw(7), d) is None:
        raise AdtMessageInvalid("PID", 7, "not a valid HL7 date")
    return patient


def _practitioner(raw: str, d: Delimiters) -> Practitioner | None:
    """XCN (PV1-7/8/17); None when it names nobody."""
    xcn = person(raw, d)
    identifier = xcn.identifier.strip()
    family = xcn.family_name.strip()
    given = xcn.given_name.strip()
    if not identifier and not family and not given:
        return None
    return Practitioner(
        identifier=identifier,
        family_name=family,
        given_name=given,
        assigning_authority=xcn.assigning_authority.strip(),
    )


def _diagnoses(segments: list[Segment], d: Delimiters) -> tuple[Diagnosis, ...]:
    dg1s = [s for s in segments if s.name == "DG1"]
    diagnoses = tuple(_diagnosis(dg1, position, d) for position, dg1 in enumerate(dg1s, 1))
    set_ids = [diagnosis.set_id for diagnosis in diagnoses]
    if len(set(set_ids)) != len(set_ids):
        # The set id keys the Condition: two DG1 with one id would write the same
        # resource twice in one transaction, and which one wins would be a guess.
        raise AdtMessageInvalid("DG1", 1, "diagnosis set id repeated")
    return diagnoses


def _diagnosis(dg1: Segment, position: int, d: Delimiters) -> Diagnosis:
    coded = components(dg1.raw(3), d)
    code = unescape_text(at(coded, 1), d).strip()
    if not code:
        # DG1-4 free text alone cannot become a coded Condition, and dropping
        # the segment would silently lose a diagnosis.
        raise AdtMessageInvalid("DG1", 3, "diagnosis without a code")
    return Diagnosis(
        # DG1-1 keys the Condition across A03/A08. Some senders leave it blank;
        # their DG1 order is then the only stable key there is.
        set_id=unescape_text(dg1.raw(1), d).strip() or str(position),
        code=code,
        display=unescape_text(at(coded, 2), d).strip() or unescape_text(dg1.raw(4), d).strip(),
        coding_system=unescape_text(at(coded, 3), d).strip(),
        diagnosis_type=_first_component(dg1.raw(6), d).upper(),
        recorded_at=_time(dg1, 5, d),
        priority=_priority(dg1, d),
    )


def _priority(dg1: Segment, d: Delimiters) -> int | None:
    # A priority that is not a number only loses the ranking, not the diagnosis.
    value = _first_component(dg1.raw(15), d)
    return int(value) if value.isdigit() else None
