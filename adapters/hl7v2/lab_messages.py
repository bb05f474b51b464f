"""Full parse of HL7 v2 lab orders (ORM^O01, OML^O21) and results (ORU^R01).

Runs inside an activity, never in workflow code. The gateway has already
decoded the bytes (MSH-18) and normalised segment separators to CR.

How it reads a message:

1. Only the segments this exchange reads (MSH, PID, ORC, TQ1, OBR, OBX) are
   handed to hl7apy (``parse_message(find_groups=False)``, tolerant
   validation). Participation, specimen and note segments (PRT, SPM, NTE,
   ...) are left out: hl7apy rejects segments its version table does not know
   (PRT in a 2.5.1 message, as the Microsoft FHIR-Converter samples send),
   and building them costs time for nothing we map.
   hl7apy decides the structure (MSH, version, segment list); the text of
   each field is then read from the same lines by position, because
   hl7apy's ``to_er7()`` re-escapes ``\\Xhh\\`` and ``\\.br\\`` sequences
   (``\\E\\X0D\\E\\``), which would lose what they encode.
2. If hl7apy refuses the message (a version it does not know, encoding
   characters it rejects), the segments are read by splitting on the
   MSH-1/MSH-2 delimiters -- the fallback, logged without values: the
   structural rules below, not hl7apy's tables, decide whether a message is
   usable.
3. Components are split and every value unescaped here (``\\F\\ \\S\\ \\T\\
   \\R\\ \\E\\ \\Xhh\\``, ``\\.br\\``; ``\\H\\``/``\\N\\`` dropped).

Grouping: document order decides. An ORC opens an order context; every OBR
is one order (orders) or one report (results); OBX belong to the OBR before
them. ``parse_lab_orders`` / ``parse_lab_results`` return one item per OBR;
the singular forms refuse a message carrying more than one, so a second
order or report is never silently dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, ParserError
from hl7apy.parser import parse_message

from models.errors import Hl7Error
from models.lab import (
    CodedConcept,
    Comparator,
    LabObservation,
    LabOrder,
    LabResult,
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
]

log = logging.getLogger(__name__)

_READ_SEGMENTS = frozenset({"MSH", "PID", "ORC", "TQ1", "OBR", "OBX"})
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


@dataclass(frozen=True)
class _Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"


@dataclass
class _Segment:
    """Raw ER7 of each field repetition, by HL7 field position (MSH-1 is the field separator)."""

    name: str
    fields: dict[int, list[str]] = field(default_factory=dict)

    def reps(self, position: int) -> list[str]:
        return [r for r in self.fields.get(position, []) if r != ""]

    def raw(self, position: int) -> str:
        reps = self.fields.get(position, [])
        return reps[0] if reps else ""


def _delimiters(msh_line: str) -> _Delimiters:
    if len(msh_line) < 8:
        raise LabMessageInvalid("MSH", 2, "encoding characters missing")
    enc = msh_line[4:8]
    if enc[3:4] == msh_line[3]:
        raise LabMessageInvalid("MSH", 2, "encoding characters missing")
    return _Delimiters(
        field=msh_line[3],
        component=enc[0],
        repetition=enc[1],
        escape=enc[2],
        subcomponent=enc[3],
    )


def _split_lines(text: str) -> list[str]:
    # Trailing blanks and empty segments are transport noise the gateway may
    # leave behind; they carry no data.
    return [line.rstrip() for line in text.split("\r") if line.strip()]


def _segments_by_splitting(lines: Sequence[str], d: _Delimiters) -> list[_Segment]:
    segments: list[_Segment] = []
    for line in lines:
        parts = line.split(d.field)
        seg = _Segment(parts[0])
        if seg.name == "MSH":
            seg.fields[1] = [d.field]
            seg.fields[2] = [parts[1] if len(parts) > 1 else ""]
            for pos, value in enumerate(parts[2:], start=3):
                seg.fields[pos] = value.split(d.repetition)
        else:
            for pos, value in enumerate(parts[1:], start=1):
                seg.fields[pos] = value.split(d.repetition)
        segments.append(seg)
    return segments


def _segments_via_hl7apy(lines: Sequence[str], d: _Delimiters) -> list[_Segment]:
    """hl7apy decides the message structure (MSH, version, segment names and
    order); field text is then read from the same lines.

    hl7apy's ``to_er7()`` re-escapes an escape character that does not start
    one of \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, so ``\\X0D\\`` would come back as
    ``\\E\\X0D\\E\\`` and lose the carriage return it encodes.
    """
    message = parse_message(
        "\r".join(lines), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False
    )
    names = [str(child.name) for child in message.children]
    if names != [line[:3] for line in lines]:
        raise ParserError("hl7apy segment list differs from the message")
    return _segments_by_splitting(lines, d)


@dataclass(frozen=True)
class _Message:
    delimiters: _Delimiters
    segments: list[_Segment]
    message_code: str
    trigger_event: str
    control_id: str
    sending_facility: str


def _read(text: str) -> _Message:
    lines = _split_lines(text)
    if not lines or not lines[0].startswith("MSH"):
        raise LabMessageInvalid("MSH", None, "message does not start with MSH")
    d = _delimiters(lines[0])
    kept = [line for line in lines if line[:3] in _READ_SEGMENTS and line[3:4] == d.field]
    try:
        segments = _segments_via_hl7apy(kept, d)
    except (HL7apyException, ValueError, IndexError, KeyError) as exc:
        # hl7apy's version tables are stricter than real senders; the
        # structural checks below still decide whether the message is usable.
        # On odd delimiters it fails with plain ValueError/IndexError (fuzzing: "MSH012345").
        log.warning(
            "hl7apy refused the message (%s); reading segments by splitting", type(exc).__name__
        )
        segments = _segments_by_splitting(kept, d)
    msh = segments[0]
    msg_type = _components(msh.raw(9), d)
    return _Message(
        delimiters=d,
        segments=segments,
        message_code=_unescape(_at(msg_type, 1), d),
        trigger_event=_unescape(_at(msg_type, 2), d),
        control_id=_unescape(msh.raw(10), d),
        sending_facility=_hd_name(msh.raw(4), d),
    )


def _components(raw: str, d: _Delimiters) -> list[str]:
    return raw.split(d.component)


def _subcomponents(raw: str, d: _Delimiters) -> list[str]:
    return raw.split(d.subcomponent)


def _at(parts: Sequence[str], position: int) -> str:
    """HL7 positions are 1-based; an absent trailing component is empty."""
    return parts[position - 1] if 0 < position <= len(parts) else ""


_HEX_ESCAPE = re.compile(r"X([0-9A-Fa-f]*)")


def _unescape(raw: str, d: _Delimiters) -> str:
    """Resolve HL7 escape sequences (v2 section 2.7) in one leaf value.

    Formatting escapes (\\H\\ \\N\\ highlight) carry no data and are dropped;
    \\.br\\ becomes a line break; an unknown sequence is kept verbatim rather
    than guessed.
    """
    e = d.escape
    if e not in raw:
        return raw
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        end = raw.find(e, i + 1) if ch == e else -1
        if ch != e or end == -1:
            out.append(ch)
            i += 1
            continue
        seq = raw[i + 1 : end]
        simple = {
            "F": d.field,
            "S": d.component,
            "T": d.subcomponent,
            "R": d.repetition,
            "E": d.escape,
        }
        hex_match = _HEX_ESCAPE.fullmatch(seq)
        if seq in simple:
            out.append(simple[seq])
        elif hex_match and len(hex_match.group(1)) % 2 == 0:
            out.append(bytes.fromhex(hex_match.group(1)).decode("latin-1"))
        elif seq in ("H", "N"):
            pass
        elif seq == ".br":
            out.append("\n")
        else:
            out.append(raw[i : end + 1])
        i = end + 1
    return "".join(out)


def _text(raw: str, d: _Delimiters) -> str:
    """A whole field read as text (ST/TX/FT): components are not split."""
    return _unescape(raw, d).strip()


def _hd_name(raw: str, d: _Delimiters) -> str:
    """HD: namespace id, else universal id (MSH-4, CX-4, EI-2/3 share the type)."""
    parts = _components(raw, d)
    return _unescape(_at(parts, 1) or _at(parts, 2), d)


def _hd_sub_name(raw: str, d: _Delimiters) -> str:
    parts = _subcomponents(raw, d)
    return _unescape(_at(parts, 1) or _at(parts, 2), d)


def _coded(raw: str, d: _Delimiters) -> CodedConcept | None:
    parts = _components(raw, d)
    code = _unescape(_at(parts, 1), d)
    text = _unescape(_at(parts, 2), d)
    if not code and not text:
        return None
    return CodedConcept(
        code=code,
        text=text,
        system=_unescape(_at(parts, 3), d),
        alternate_code=_unescape(_at(parts, 4), d),
        alternate_text=_unescape(_at(parts, 5), d),
        alternate_system=_unescape(_at(parts, 6), d),
    )


def _entity(raw: str, d: _Delimiters) -> tuple[str | None, str]:
    """EI (ORC-2/3, OBR-2/3): entity id and the namespace that issued it."""
    parts = _components(raw, d)
    number = _unescape(_at(parts, 1), d).strip()
    namespace = _unescape(_at(parts, 2) or _at(parts, 3), d).strip()
    return (number or None, namespace)


# --- timestamps -----------------------------------------------------------------

_DTM = re.compile(
    r"(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.\d{1,4})?(?P<tz>[+-]\d{4})?"
)


def _timestamp(raw: str, d: _Delimiters) -> datetime | None:
    """DTM/TS (first component). Without an offset the value stays naive:
    the sender's local time, never assumed to be UTC. Impossible dates give None."""
    value = _at(_components(raw, d), 1).strip()
    match = _DTM.fullmatch(value)
    if not match:
        return None
    g = match.groupdict()
    tz = None
    if g["tz"]:
        sign = 1 if g["tz"][0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][3:5])))
    try:
        return datetime(
            int(g["y"]),
            int(g["mo"] or 1),
            int(g["d"] or 1),
            int(g["h"] or 0),
            int(g["mi"] or 0),
            int(g["s"] or 0),
            tzinfo=tz,
        )
    except ValueError:
        return None


def _birth_date(raw: str, d: _Delimiters) -> date | None:
    value = _at(_components(raw, d), 1).strip()
    if len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


# --- patient and people ------------------------------------------------------------


def _patient(segments: Iterable[_Segment], d: _Delimiters) -> PatientRef:
    pid = next((s for s in segments if s.name == "PID"), None)
    if pid is None:
        raise LabMessageInvalid("PID", None, "patient identification segment missing")
    identifiers = [_components(rep, d) for rep in pid.reps(3)]
    # PID-3 repeats (MRN, SSN, ...): the medical record number is what a lab
    # result is filed against, so prefer identifier type MR.
    chosen = next((c for c in identifiers if _at(c, 5) == "MR"), None)
    chosen = chosen or next((c for c in identifiers if _at(c, 1)), None)
    if chosen is None or not _at(chosen, 1):
        raise LabMessageInvalid("PID", 3, "patient identifier list empty")
    name = _components(pid.reps(5)[0], d) if pid.reps(5) else []
    return PatientRef(
        identifier=_unescape(_at(chosen, 1), d),
        assigning_authority=_hd_sub_name(_at(chosen, 4), d),
        identifier_type=_unescape(_at(chosen, 5), d),
        family_name=_unescape(_at(_subcomponents(_at(name, 1), d), 1), d),
        given_name=_unescape(_at(name, 2), d),
        birth_date=_birth_date(pid.raw(7), d),
        sex=_unescape(_at(_components(pid.raw(8), d), 1), d),
    )


def _provider(raw: str, d: _Delimiters) -> OrderingProvider | None:
    """XCN (ORC-12, OBR-16). Without an id there is no work queue to address."""
    parts = _components(raw, d)
    provider_id = _unescape(_at(parts, 1), d).strip()
    if not provider_id:
        return None
    return OrderingProvider(
        id=provider_id,
        family_name=_unescape(_at(_subcomponents(_at(parts, 2), d), 1), d),
        given_name=_unescape(_at(parts, 3), d),
        assigning_authority=_hd_sub_name(_at(parts, 9), d),
    )


def parse_patient(text: str) -> PatientRef:
    """The patient of any v2 message (PID), values unescaped and otherwise verbatim."""
    message = _read(text)
    return _patient(message.segments, message.delimiters)


# --- priority ----------------------------------------------------------------------

# HL7 table 0027 (priority): S stat, A asap, R routine; P (pre-op), C
# (callback) and T (timing critical) are scheduling hints, not urgency, so
# they stay routine. TQ1-9 uses the same codes (table 0485).
_PRIORITY_0027: dict[str, Priority] = {"S": "stat", "A": "asap", "R": "routine"}


def _priority(
    orc: _Segment | None, obr: _Segment, tq1: _Segment | None, d: _Delimiters
) -> Priority:
    candidates = [
        _at(_components(tq1.raw(9), d), 1) if tq1 else "",
        _at(_components(obr.raw(27), d), 6),
        _at(_components(orc.raw(7), d), 6) if orc else "",
    ]
    for code in candidates:
        code = _unescape(code, d).strip().upper()
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
    patient = _patient(message.segments, d)
    orders: list[LabOrder] = []
    orc: _Segment | None = None
    tq1: _Segment | None = None
    for seg in message.segments:
        if seg.name == "ORC":
            orc, tq1 = seg, None
        elif seg.name == "TQ1" and tq1 is None:
            tq1 = seg
        elif seg.name == "OBR":
            if orc is None:
                raise LabMessageInvalid("ORC", None, "OBR without a common order segment")
            orders.append(_order(message, patient, orc, seg, tq1))
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
    orc: _Segment | None,
    obr: _Segment,
    d: _Delimiters,
) -> tuple[str | None, str, str | None, str]:
    # OBR-2/3 identify this very request; ORC-2/3 repeat them for the order
    # group, so they serve when a sender fills only the ORC.
    placer, placer_ns = _entity(obr.raw(2), d)
    if placer is None and orc is not None:
        placer, placer_ns = _entity(orc.raw(2), d)
    filler, filler_ns = _entity(obr.raw(3), d)
    if filler is None and orc is not None:
        filler, filler_ns = _entity(orc.raw(3), d)
    if placer is None and filler is None:
        # Matching a result or a cancel to an order without either number
        # would be a guess (e.g. by patient and test): refuse instead.
        raise LabMessageInvalid(
            "OBR", 2, "neither placer (OBR-2/ORC-2) nor filler (OBR-3/ORC-3) order number present"
        )
    return placer, placer_ns, filler, filler_ns


def _order(
    message: _Message, patient: PatientRef, orc: _Segment, obr: _Segment, tq1: _Segment | None
) -> LabOrder:
    d = message.delimiters
    placer, placer_ns, filler, filler_ns = _order_numbers(orc, obr, d)
    test = _coded(obr.raw(4), d)
    if test is None:
        raise LabMessageInvalid("OBR", 4, "universal service identifier missing")
    provider = _provider(orc.raw(12), d) or _provider(obr.raw(16), d)
    return LabOrder(
        control_id=message.control_id,
        sending_facility=message.sending_facility,
        order_control=_unescape(orc.raw(1), d).strip().upper(),
        placer_order_number=placer,
        placer_namespace=placer_ns,
        filler_order_number=filler,
        filler_namespace=filler_ns,
        priority=_priority(orc, obr, tq1, d),
        requested_test=test,
        ordered_at=_timestamp(orc.raw(9), d) or _timestamp(obr.raw(6), d),
        patient=patient,
        ordering_provider=provider,
    )


# --- results -----------------------------------------------------------------------


def parse_lab_results(text: str) -> list[LabResult]:
    """Every report (one per OBR with its OBX) of an ORU^R01, in message order."""
    message = _read(text)
    d = message.delimiters
    if (message.message_code, message.trigger_event) not in _RESULT_TYPES:
        raise LabMessageInvalid("MSH", 9, "not a lab result message (ORU^R01)")
    groups: list[tuple[_Segment | None, _Segment, list[_Segment]]] = []
    orc: _Segment | None = None
    for seg in message.segments:
        if seg.name == "ORC":
            orc = seg
        elif seg.name == "OBR":
            groups.append((orc, seg, []))
        elif seg.name == "OBX":
            if not groups:
                # An OBX outside an OBR group cannot be attributed to an
                # order; filing it anyway would be a half-read result.
                raise LabMessageInvalid("OBX", None, "observation before any OBR")
            groups[-1][2].append(seg)
    if not groups:
        raise LabMessageInvalid("OBR", None, "observation request segment missing")
    patient = _patient(message.segments, d)
    results: list[LabResult] = []
    for group_orc, obr, obxs in groups:
        status = _unescape(obr.raw(25), d).strip().upper()
        # OBR-25 = X: the test could not be done; a report with no OBX is expected.
        if not obxs and status != "X":
            raise LabMessageInvalid("OBX", None, "observation request without observations")
        results.append(_result(message, patient, group_orc, obr, obxs, status))
    return results


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
    orc: _Segment | None,
    obr: _Segment,
    obxs: Sequence[_Segment],
    status: str,
) -> LabResult:
    d = message.delimiters
    placer, placer_ns, filler, filler_ns = _order_numbers(orc, obr, d)
    service = _coded(obr.raw(4), d)
    if service is None:
        raise LabMessageInvalid("OBR", 4, "universal service identifier missing")
    provider = (_provider(orc.raw(12), d) if orc else None) or _provider(obr.raw(16), d)
    return LabResult(
        control_id=message.control_id,
        sending_facility=message.sending_facility,
        placer_order_number=placer,
        placer_namespace=placer_ns,
        filler_order_number=filler,
        filler_namespace=filler_ns,
        obr_set_id=_unescape(obr.raw(1), d).strip(),
        universal_service_id=service,
        result_status=status,
        observed_at=_timestamp(obr.raw(7), d),
        reported_at=_timestamp(obr.raw(22), d),
        observations=tuple(_observation(obx, index, d) for index, obx in enumerate(obxs, 1)),
        patient=patient,
        ordering_provider=provider,
    )


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


def _value(value_type: str, reps: list[str], d: _Delimiters) -> _Value:
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
    parts = [_unescape(p, d).strip() for p in _components(reps[0], d)]
    return _Value("string", text=" ".join(p for p in parts if p))


def _numeric(value_type: str, raw: str, d: _Delimiters) -> _Value | None:
    if value_type == "SN":
        # SN: comparator ^ num1 ^ separator/suffix ^ num2. A ratio or range
        # (1:128, 2-5) is a valid result but not one quantity.
        parts = [_unescape(p, d).strip() for p in _components(raw, d)]
        symbol, num1, separator, num2 = (_at(parts, i) for i in (1, 2, 3, 4))
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


def _reference_range(raw: str, d: _Delimiters) -> tuple[float | None, float | None, str]:
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


def _observation(obx: _Segment, index: int, d: _Delimiters) -> LabObservation:
    code = _coded(obx.raw(3), d)
    if code is None:
        raise LabMessageInvalid("OBX", 3, "observation identifier missing")
    value_type = _unescape(obx.raw(2), d).strip().upper()
    value = _value(value_type, obx.reps(5), d)
    low, high, range_text = _reference_range(obx.raw(7), d)
    flags = tuple(
        flag
        for flag in (_unescape(_at(_components(rep, d), 1), d).strip() for rep in obx.reps(8))
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
        units=_unescape(_at(_components(obx.raw(6), d), 1), d).strip(),
        reference_range_low=low,
        reference_range_high=high,
        reference_range_text=range_text,
        abnormal_flags=flags,
        result_status=_unescape(obx.raw(11), d).strip().upper(),
        observed_at=_timestamp(obx.raw(14), d),
    )
