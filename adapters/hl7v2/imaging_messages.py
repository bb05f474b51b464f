"""What an imaging order or report says beyond a lab one: the accession number (OBR-18,
placer field 1, where IHE scheduled workflow puts it; else the filler order number), the
diagnostic service section (OBR-24), the scheduled time (TQ1-7, else OBR-36, else
ORC-7.4) and the visit the order was placed in (PV1-19). The rest is the lab reader's
(parse_lab_order / parse_lab_results): one reader of ORC/OBR/PID for both halves of
order-to-result."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from adapters.hl7v2.fields import (
    FILLER_ORDER_NUMBER_FIELDS,
    Segment,
    delimiters_from_msh,
    read_segments,
    split_segments,
    timestamp,
)
from adapters.hl7v2.lab_messages import LabMessageInvalid

_READ = ("MSH", "PV1", "ORC", "OBR", "TQ1")


class ImagingFields(BaseModel):
    """The imaging-only fields of the first ORC/OBR group (PHI: the accession number)."""

    model_config = ConfigDict(frozen=True)

    accession_number: str
    diagnostic_section: str = ""
    procedure_code: str = ""
    scheduled_start: datetime | None = None
    # PV1-19: the ImagingStudy's encounter, when the FHIR server knows that visit.
    visit_number: str = ""


def read_imaging_fields(text: str) -> ImagingFields:
    """Raises LabMessageInvalid naming OBR-18 when neither it nor a filler number is valued:
    without an accession the order cannot reach its worklist entry, study or report."""
    lines = split_segments(text)
    if not lines or not lines[0].startswith("MSH"):
        raise LabMessageInvalid("MSH", None, "message does not start with MSH")
    delimiters = delimiters_from_msh(lines[0])
    if delimiters is None:
        raise LabMessageInvalid("MSH", 2, "encoding characters missing")
    segments = read_segments((line for line in lines if line[:3] in _READ), delimiters)
    first: dict[str, Segment] = {}
    for segment in segments:
        first.setdefault(segment.name, segment)
    obr = first.get("OBR")
    if obr is None:
        raise LabMessageInvalid("OBR", None, "an imaging message needs an OBR segment")
    accession = accession_number_of(lambda s, p: _value(first.get(s), p))
    if not accession:
        raise LabMessageInvalid(
            "OBR", 18, "no accession number (OBR-18) nor filler order number (ORC-3/OBR-3)"
        )
    scheduled = None
    for segment_id, position, component in (("TQ1", 7, 1), ("OBR", 36, 1), ("ORC", 7, 4)):
        timing = first.get(segment_id)
        if timing is not None and (raw := timing.component(position, component)):
            scheduled = timestamp(raw, delimiters)
            if scheduled is not None:
                break
    return ImagingFields(
        accession_number=accession,
        diagnostic_section=obr.value(24).strip().upper(),
        procedure_code=obr.value(4).strip(),
        scheduled_start=scheduled,
        visit_number=_value(first.get("PV1"), 19).strip(),
    )


def accession_number_of(read: Callable[[str, int], str]) -> str:
    """OBR-18, else the filler order number (ORC-3, then OBR-3); ``read(segment, field)``
    reads the first such segment. Shared by the reader and the gateway's routing."""
    found = read("OBR", 18).strip()
    if found:
        return found
    for segment_id, position in FILLER_ORDER_NUMBER_FIELDS:
        found = read(segment_id, position).strip()
        if found:
            return found
    return ""


def _value(segment: Segment | None, position: int) -> str:
    return segment.value(position) if segment is not None else ""
