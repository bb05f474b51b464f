"""Full parse of HL7 v2 lab orders (ORM^O01, OML^O21) and results (ORU^R01).

Runs inside an activity, never in workflow code. The gateway has already
decoded the bytes (MSH-18) and normalised segment separators to CR.

How it reads a message: with ``adapters.hl7v2.fields``, the project's one field reader,
on the MSH-1/MSH-2 delimiters the message declares. Only the segments this exchange
reads (MSH, PID, ORC, TQ1, OBR, OBX) are split into fields; participation, specimen
and note segments (PRT, SPM, NTE, ...) carry nothing it maps. Values are unescaped as
text (``fields.unescape_text``: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\``, ``\\.br\\`` a line
break, ``\\H\\``/``\\N\\`` dropped). The structural rules below, not a library's
version tables, decide whether a message is usable.

No hl7apy: its parse only ever decided whether to log a warning (the segments were
read by splitting either way) and cost 20-250 ms per result, nearly all of this parse.

Grouping: document order decides. An ORC opens an order context; every OBR
is one order (orders) or one report (results); OBX belong to the OBR before
them. ``parse_lab_orders`` / ``parse_lab_results`` return one item per OBR;
the singular forms refuse a message carrying more than one, so a second
order or report is never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from adapters.hl7v2.fields import (
    FILLER_ORDER_NUMBER_FIELDS,
    PLACER_ORDER_NUMBER_FIELDS,
    Delimiters,
    Segment,
    at,
    components,
    date_value,
    delimiters_from_msh,
    entity_identifier,
    hd_name,
    identifier,
    person,
    read_segments,
    split_segments,
    subcomponents,
    timestamp,
    unescape_text,
)
from adapters.hl7v2.person_fields import PidFieldInvalid, read_person
from models.demographics import PersonDemographics
from models.errors import Hl7Error
from models.lab import (
    CodedConcept,
    Comparator,
    LabObservation,
    LabOrder,
    LabResult,
    LabSpecimen,
    OrderingProvider,
    PatientRef,
    Priority,
    StructuralProblem,
    ValueKind,
)

__all__ = [
    "LabMessageInvalid",
    "parse_lab_order",
    "parse_lab_orders",
    "parse_lab_result",
    "parse_lab_results",
    "parse_patient",
    "read_patient",
]


_READ_SEGMENTS = frozenset({"MSH", "PID", "ORC", "TQ1", "OBR", "OBX", "NTE", "SPM"})
_ORDER_TYPES = frozenset({("ORM", "O01"), ("OML", "O21")})
_RESULT_TYPES = frozenset({("ORU", "R01")})


class LabMessageInvalid(Hl7Error, ValueError):
    """The message cannot be used as a lab order/result (answer AE, or send to review).

    The text names the segment and field only; it never carries a value, so it
    is safe for Temporal failure messages and logs (no PHI).
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


# --- low-level reading -------------------------------------------------------------


def _delimiters(msh_line: str) -> Delimiters:
    delimiters = delimiters_from_msh(msh_line)
    if delimiters is None:
        raise LabMessageInvalid("MSH", 2, "encoding characters missing")
    return delimiters


@dataclass(frozen=True)
class _Message:
    delimiters: Delimiters
    segments: list[Segment]
    message_code: str
    trigger_event: str
    control_id: str
    sending_facility: str


def _read(text: str) -> _Message:
    lines = split_segments(text)
    if not lines or not lines[0].startswith("MSH"):
        raise LabMessageInvalid("MSH", None, "message does not start with MSH")
    d = _delimiters(lines[0])
    segments = read_segments((line for line in lines if line[:3] in _READ_SEGMENTS), d)
    msh = segments[0]
    msg_type = components(msh.raw(9), d)
    return _Message(
        delimiters=d,
        segments=segments,
        message_code=unescape_text(at(msg_type, 1), d),
        trigger_event=unescape_text(at(msg_type, 2), d),
        control_id=unescape_text(msh.raw(10), d),
        sending_facility=hd_name(msh.raw(4), d),
    )


def _valued(segment: Segment, position: int) -> list[str]:
    """The repetitions of a field that carry something (empty ones are no data)."""
    return [rep for rep in segment.repetitions(position) if rep]


def _text(raw: str, d: Delimiters) -> str:
    """A whole field read as text (ST/TX/FT): components are not split."""
    return unescape_text(raw, d).strip()


def _coded(raw: str, d: Delimiters) -> CodedConcept | None:
    parts = components(raw, d)
    code = unescape_text(at(parts, 1), d)
    text = unescape_text(at(parts, 2), d)
    if not code and not text:
        return None
    return CodedConcept(
        code=code,
        text=text,
        system=unescape_text(at(parts, 3), d),
        alternate_code=unescape_text(at(parts, 4), d),
        alternate_text=unescape_text(at(parts, 5), d),
        alternate_system=unescape_text(at(parts, 6), d),
    )


# --- patient and people ------------------------------------------------------------


def read_patient(segments: Iterable[Segment], delimiters: Delimiters) -> PatientRef:
    """The patient of the first PID, values unescaped and otherwise verbatim.

    The lab and ADT exchanges both read it here, so a Patient written by discharge
    sync is the one lab results reference by identifier.
    """
    d = delimiters
    pid = next((s for s in segments if s.name == "PID"), None)
    if pid is None:
        raise LabMessageInvalid("PID", None, "patient identification segment missing")
    identifiers = _valued(pid, 3)
    # PID-3 repeats (MRN, SSN, ...): the medical record number is what a lab
    # result is filed against, so prefer identifier type MR.
    chosen = next((c for c in identifiers if at(components(c, d), 5) == "MR"), None)
    chosen = chosen or next((c for c in identifiers if at(components(c, d), 1)), None)
    if chosen is None or not at(components(chosen, d), 1):
        raise LabMessageInvalid("PID", 3, "patient identifier list empty")
    record = identifier(chosen, d)
    names = _valued(pid, 5)
    name = components(names[0], d) if names else []
    return PatientRef(
        identifier=record.identifier,
        assigning_authority=record.assigning_authority,
        identifier_type=record.identifier_type,
        family_name=unescape_text(at(subcomponents(at(name, 1), d), 1), d),
        given_name=unescape_text(at(name, 2), d),
        birth_date=date_value(pid.raw(7), d),
        sex=unescape_text(at(components(pid.raw(8), d), 1), d),
    )


def _ordering_provider(*fields: str, d: Delimiters) -> OrderingProvider | None:
    """The first XCN of ``fields`` (ORC-12, OBR-16) that carries an id -- only an id names a
    work queue -- else the first that carries a name (a requester known by name only)."""
    providers = [p for raw in fields if raw and (p := _provider(raw, d)) is not None]
    return next((p for p in providers if p.id), providers[0] if providers else None)


def _provider(raw: str, d: Delimiters) -> OrderingProvider | None:
    xcn = person(raw, d)
    provider_id = xcn.identifier.strip()
    if not provider_id and not (xcn.family_name or xcn.given_name):
        return None
    return OrderingProvider(
        id=provider_id,
        family_name=xcn.family_name,
        given_name=xcn.given_name,
        assigning_authority=xcn.assigning_authority,
    )


def read_person_of(
    segments: Iterable[Segment], d: Delimiters, patient: PatientRef
) -> PersonDemographics | None:
    """Everything the first PID says about the person, for the Patient a result may have to
    create; None when a birth or death date cannot be read: the result is still filed, and
    a Patient it has to create holds only what PatientRef read (a refused date is not
    guessed at)."""
    pid = next(s for s in segments if s.name == "PID")
    try:
        return read_person(pid, d, patient)
    except PidFieldInvalid:
        return None


def parse_patient(text: str) -> PatientRef:
    """The patient of any v2 message (PID), values unescaped and otherwise verbatim."""
    message = _read(text)
    return read_patient(message.segments, message.delimiters)


# --- priority ----------------------------------------------------------------------

# HL7 table 0027 (priority): S stat, A asap, R routine; P (pre-op), C
# (callback) and T (timing critical) are scheduling hints, not urgency, so
# they stay routine. TQ1-9 uses the same codes (table 0485).
_PRIORITY_0027: dict[str, Priority] = {"S": "stat", "A": "asap", "R": "routine"}


def _priority(orc: Segment | None, obr: Segment, tq1: Segment | None, d: Delimiters) -> Priority:
    candidates = [
        at(components(tq1.raw(9), d), 1) if tq1 else "",
        at(components(obr.raw(27), d), 6),
        at(components(orc.raw(7), d), 6) if orc else "",
    ]
    for code in candidates:
        code = unescape_text(code, d).strip().upper()
        if code:
            return _PRIORITY_0027.get(code, "routine")
    return "routine"


# --- orders ------------------------------------------------------------------------


def parse_lab_orders(text: str) -> list[LabOrder]:
    """Every order (one per OBR) of an ORM^O01 / OML^O21, in message order."""
    message = _read(text)
    d = message.delimiters
    if (message.message_code, message.trigger_event) not in _ORDER_TYPES:
        raise LabMessageInvalid("MSH", 9, "not a lab order message (ORM^O01 or OML^O21)")
    patient = read_patient(message.segments, d)
    demographics = read_person_of(message.segments, d, patient)
    orders: list[LabOrder] = []
    orc: Segment | None = None
    tq1: Segment | None = None
    for seg in message.segments:
        if seg.name == "ORC":
            orc, tq1 = seg, None
        elif seg.name == "TQ1" and tq1 is None:
            tq1 = seg
        elif seg.name == "OBR":
            if orc is None:
                raise LabMessageInvalid("ORC", None, "OBR without a common order segment")
            orders.append(_order(message, patient, demographics, orc, seg, tq1))
    if orc is None:
        raise LabMessageInvalid("ORC", None, "common order segment missing")
    if not orders:
        raise LabMessageInvalid("OBR", None, "observation request segment missing")
    return orders


def parse_lab_order(text: str) -> LabOrder:
    """The single order of an ORM^O01 / OML^O21; refuses a message with several."""
    orders = parse_lab_orders(text)
    if len(orders) != 1:
        raise LabMessageInvalid(
            "OBR", None, f"message carries {len(orders)} orders; use parse_lab_orders"
        )
    return orders[0]


def _order_numbers(
    orc: Segment | None,
    obr: Segment,
    d: Delimiters,
) -> tuple[str | None, str, str | None, str]:
    """Placer and filler order numbers with their namespaces, by the project's one rule.

    ``PLACER_ORDER_NUMBER_FIELDS`` / ``FILLER_ORDER_NUMBER_FIELDS``: ORC-2/ORC-3 of the
    ORC that opens this OBR's order context, else OBR-2/OBR-3, for orders and results
    alike. Routing keys the order-to-result exchange by the same rule, so an order whose
    ORC-2 and OBR-2 differ and its result meet in one exchange. A namespace travels with
    its number only.
    """
    in_context = {"ORC": orc, "OBR": obr}
    placer, placer_ns = _order_number(PLACER_ORDER_NUMBER_FIELDS, in_context, d)
    filler, filler_ns = _order_number(FILLER_ORDER_NUMBER_FIELDS, in_context, d)
    if placer is None and filler is None:
        # Matching a result or a cancel to an order without either number
        # would be a guess (e.g. by patient and test): refuse instead.
        raise LabMessageInvalid(
            "OBR", 2, "neither placer (ORC-2/OBR-2) nor filler (ORC-3/OBR-3) order number present"
        )
    return placer, placer_ns, filler, filler_ns


def _order_number(
    where: tuple[tuple[str, int], ...], in_context: dict[str, Segment | None], d: Delimiters
) -> tuple[str | None, str]:
    for segment_id, position in where:
        segment = in_context.get(segment_id)
        if segment is not None:
            number, namespace = entity_identifier(segment.raw(position), d)
            if number is not None:
                return number, namespace
    return None, ""


def _order(
    message: _Message,
    patient: PatientRef,
    demographics: PersonDemographics | None,
    orc: Segment,
    obr: Segment,
    tq1: Segment | None,
) -> LabOrder:
    d = message.delimiters
    placer, placer_ns, filler, filler_ns = _order_numbers(orc, obr, d)
    test = _coded(obr.raw(4), d)
    if test is None:
        raise LabMessageInvalid("OBR", 4, "universal service identifier missing")
    provider = _ordering_provider(orc.raw(12), obr.raw(16), d=d)
    return LabOrder(
        control_id=message.control_id,
        sending_facility=message.sending_facility,
        order_control=unescape_text(orc.raw(1), d).strip().upper(),
        placer_order_number=placer,
        placer_namespace=placer_ns,
        filler_order_number=filler,
        filler_namespace=filler_ns,
        priority=_priority(orc, obr, tq1, d),
        requested_test=test,
        ordered_at=timestamp(orc.raw(9), d) or timestamp(obr.raw(6), d),
        patient=patient,
        person=demographics,
        ordering_provider=provider,
    )


# --- results -----------------------------------------------------------------------


def parse_lab_results(text: str) -> list[LabResult]:
    """Every report (one per OBR with its OBX) of an ORU^R01, in message order."""
    message = _read(text)
    d = message.delimiters
    if (message.message_code, message.trigger_event) not in _RESULT_TYPES:
        raise LabMessageInvalid("MSH", 9, "not a lab result message (ORU^R01)")
    groups: list[_ReportGroup] = []
    orc: Segment | None = None
    for seg in message.segments:
        if seg.name == "ORC":
            orc = seg
        elif seg.name == "OBR":
            groups.append(_ReportGroup(orc, seg))
        elif seg.name == "OBX":
            if not groups:
                # An OBX outside an OBR group cannot be attributed to an
                # order; filing it anyway would be a half-read result.
                raise LabMessageInvalid("OBX", None, "observation before any OBR")
            groups[-1].obxs.append(seg)
            groups[-1].obx_notes.append([])
        elif seg.name == "SPM" and groups and groups[-1].spm is None:
            groups[-1].spm = seg
        elif seg.name == "NTE" and groups and (note := _note(seg, d)):
            # A comment belongs to the OBX it follows, or to the OBR before any OBX.
            group = groups[-1]
            (group.obx_notes[-1] if group.obxs else group.notes).append(note)
    if not groups:
        raise LabMessageInvalid("OBR", None, "observation request segment missing")
    patient = read_patient(message.segments, d)
    demographics = read_person_of(message.segments, d, patient)
    results: list[LabResult] = []
    for group in groups:
        status = unescape_text(group.obr.raw(25), d).strip().upper()
        # OBR-25 = X: the test could not be done; a report with no OBX is expected.
        if not group.obxs and status != "X":
            raise LabMessageInvalid("OBX", None, "observation request without observations")
        results.append(_result(message, patient, demographics, group, status))
    return results


@dataclass
class _ReportGroup:
    """One OBR with its OBX, and the NTE comments on each."""

    orc: Segment | None
    obr: Segment
    obxs: list[Segment] = field(default_factory=list)
    obx_notes: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The group's first SPM (v2.5+ SPECIMEN group); later ones are other containers.
    spm: Segment | None = None


def _note(nte: Segment, d: Delimiters) -> str:
    """NTE-3 (FT, repeating) as text: escapes resolved, \\.br\\ and repetitions as line
    breaks."""
    return "\n".join(unescape_text(line, d) for line in nte.repetitions(3)).strip()


def parse_lab_result(text: str) -> LabResult:
    """The single report of an ORU^R01; refuses a message with several OBR groups."""
    results = parse_lab_results(text)
    if len(results) != 1:
        raise LabMessageInvalid(
            "OBR", None, f"message carries {len(results)} reports; use parse_lab_results"
        )
    return results[0]


def _result(
    message: _Message,
    patient: PatientRef,
    demographics: PersonDemographics | None,
    group: _ReportGroup,
    status: str,
) -> LabResult:
    d = message.delimiters
    orc, obr = group.orc, group.obr
    placer, placer_ns, filler, filler_ns = _order_numbers(orc, obr, d)
    service = _coded(obr.raw(4), d)
    if service is None:
        raise LabMessageInvalid("OBR", 4, "universal service identifier missing")
    provider = _ordering_provider(orc.raw(12) if orc else "", obr.raw(16), d=d)
    return LabResult(
        control_id=message.control_id,
        sending_facility=message.sending_facility,
        placer_order_number=placer,
        placer_namespace=placer_ns,
        filler_order_number=filler,
        filler_namespace=filler_ns,
        obr_set_id=unescape_text(obr.raw(1), d).strip(),
        universal_service_id=service,
        result_status=status,
        observed_at=timestamp(obr.raw(7), d),
        reported_at=timestamp(obr.raw(22), d),
        observations=tuple(
            _observation(obx, index, d, notes)
            for index, (obx, notes) in enumerate(zip(group.obxs, group.obx_notes, strict=True), 1)
        ),
        patient=patient,
        person=demographics,
        ordering_provider=provider,
        notes=tuple(group.notes),
        specimen=_specimen(group.spm, obr, d),
        results_interpreter=_interpreter(obr.raw(32), d),
    )


def _interpreter(raw: str, d: Delimiters) -> str:
    """OBR-32 (NDL): its first component is a CNN in subcomponents (1 id, 2 family name,
    3 given name); the name as people write it, else the id."""
    cnn = subcomponents(at(components(raw, d), 1), d)
    identifier, family, given = (unescape_text(at(cnn, n), d).strip() for n in (1, 2, 3))
    return " ".join(part for part in (given, family) if part) or identifier


def _specimen(spm: Segment | None, obr: Segment, d: Delimiters) -> LabSpecimen | None:
    """SPM when there is one (v2.5+), else OBR-15 (v2.3 SPS: 1 source, 4 body site, each a
    CE in subcomponents); times from SPM-17/18, else OBR-7/14; collector from OBR-10."""
    collector = person(obr.raw(10), d)
    collector_name = " ".join(p for p in (collector.given_name, collector.family_name) if p)
    if spm is not None:
        specimen_type = _coded(spm.raw(4), d)
        body_site = _coded(spm.raw(8), d)
        collected = timestamp(at(components(spm.raw(17), d), 1), d)
        received = timestamp(spm.raw(18), d)
    else:
        source = components(obr.raw(15), d)
        specimen_type = _coded_subcomponents(at(source, 1), d)
        body_site = _coded_subcomponents(at(source, 4), d)
        if specimen_type is None and body_site is None:
            return None
        collected = received = None
    return LabSpecimen(
        type=specimen_type,
        body_site=body_site,
        collected_at=collected or timestamp(obr.raw(7), d),
        received_at=received or timestamp(obr.raw(14), d),
        collector=collector_name,
    )


def _coded_subcomponents(raw: str, d: Delimiters) -> CodedConcept | None:
    """A CE carried in one component (OBR-15's parts): code, text, system as subcomponents."""
    parts = subcomponents(raw, d)
    code, text = unescape_text(at(parts, 1), d), unescape_text(at(parts, 2), d)
    if not code and not text:
        return None
    return CodedConcept(code=code, text=text, system=unescape_text(at(parts, 3), d))


_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_COMPARED_NUMBER = re.compile(rf"(?P<cmp><=|>=|<|>)?\s*(?P<num>{_NUMBER})")
_RANGE = re.compile(rf"(?P<low>{_NUMBER})\s*(?:-|_|to)\s*(?P<high>{_NUMBER})")
_BOUND = re.compile(rf"(?P<cmp><=|>=|<|>)\s*(?P<num>{_NUMBER})\b.*", re.DOTALL)


@dataclass(frozen=True)
class _Value:
    kind: ValueKind
    number: float | None = None
    comparator: Comparator | None = None
    text: str | None = None
    coded: CodedConcept | None = None
    non_numeric_in_nm: bool = False


def _comparator(symbol: str) -> Comparator | None:
    comparators: dict[str, Comparator] = {"<": "<", ">": ">", "<=": "<=", ">=": ">="}
    return comparators.get(symbol)


def _value(value_type: str, reps: list[str], d: Delimiters) -> _Value:
    if not reps:
        return _Value("absent")
    if value_type in ("NM", "SN"):
        if len(reps) == 1:
            parsed = _numeric(value_type, reps[0], d)
            if parsed is not None:
                return parsed
        # Text (e.g. "see note") or several repetitions in a numeric field:
        # kept as text and flagged so it is never published as a number.
        joined = "~".join(_text(rep, d) for rep in reps)
        return _Value("string", text=joined, non_numeric_in_nm=True)
    if value_type in ("CE", "CWE", "CNE", "CF"):
        coded = _coded(reps[0], d)
        if coded is not None:
            return _Value("coded", coded=coded)
        return _Value("absent")
    if value_type in ("ST", "TX", "FT"):
        return _Value("string", text="\n".join(_text(rep, d) for rep in reps))
    # Other types (RP, ED, FN, ...) have no lab value semantics here: keep the
    # visible components as text so nothing is lost and nothing is guessed.
    parts = [unescape_text(p, d).strip() for p in components(reps[0], d)]
    return _Value("string", text=" ".join(p for p in parts if p))


def _numeric(value_type: str, raw: str, d: Delimiters) -> _Value | None:
    if value_type == "SN":
        # SN: comparator ^ num1 ^ separator/suffix ^ num2. A ratio or range
        # (1:128, 2-5) is a valid result but not one quantity.
        parts = [unescape_text(p, d).strip() for p in components(raw, d)]
        symbol, num1, separator, num2 = (at(parts, i) for i in (1, 2, 3, 4))
        if separator or num2:
            text = f"{symbol}{num1}{separator}{num2}".strip()
            return _Value("string", text=text)
        candidate = f"{symbol}{num1}"
    else:
        candidate = _text(raw, d)
    match = _COMPARED_NUMBER.fullmatch(candidate.strip())
    if not match:
        return None
    return _Value(
        "quantity",
        number=float(match.group("num")),
        comparator=_comparator(match.group("cmp") or ""),
    )


def _reference_range(raw: str, d: Delimiters) -> tuple[float | None, float | None, str]:
    text = _text(raw, d)
    # Some senders put the range in a later component ("^^10.000000"): read
    # the visible text, not component 1 only.
    visible = " ".join(p for p in (s.strip() for s in text.split(d.component)) if p)
    if match := _RANGE.fullmatch(visible):
        return float(match.group("low")), float(match.group("high")), visible
    if match := _BOUND.fullmatch(visible):
        bound = float(match.group("num"))
        if match.group("cmp").startswith("<"):
            return None, bound, visible
        return bound, None, visible
    return None, None, visible


def _observation(
    obx: Segment, index: int, d: Delimiters, notes: Sequence[str] = ()
) -> LabObservation:
    code = _coded(obx.raw(3), d)
    if code is None:
        raise LabMessageInvalid("OBX", 3, "observation identifier missing")
    value_type = unescape_text(obx.raw(2), d).strip().upper()
    value = _value(value_type, _valued(obx, 5), d)
    low, high, range_text = _reference_range(obx.raw(7), d)
    flags = tuple(
        flag
        for flag in (unescape_text(at(components(rep, d), 1), d).strip() for rep in _valued(obx, 8))
        if flag
    )
    return LabObservation(
        # OBX-1 is often blank or repeated (1,1,1) in real feeds; the position
        # in the OBR group is what keeps observation identifiers unique.
        set_id=str(index),
        value_type=value_type,
        code=code,
        value_kind=value.kind,
        numeric_value=value.number,
        comparator=value.comparator,
        string_value=value.text,
        coded_value=value.coded,
        non_numeric_in_nm=value.non_numeric_in_nm,
        units=unescape_text(at(components(obx.raw(6), d), 1), d).strip(),
        reference_range_low=low,
        reference_range_high=high,
        reference_range_text=range_text,
        abnormal_flags=flags,
        result_status=unescape_text(obx.raw(11), d).strip().upper(),
        observed_at=timestamp(obx.raw(14), d),
        notes=tuple(notes),
        performing_organization=unescape_text(at(components(obx.raw(23), d), 1), d).strip(),
    )
