"""The one HL7 v2 field reader: the gateway's fast path and the lab and ADT parsers read
every v2 field here.

Plain string splitting on the message's own MSH-1/MSH-2 delimiters, no hl7apy and no
models: the gateway reads MSH and routing keys with it before the ACK (so it must stay
cheap), the lab and ADT parsers read whole messages with it in their activities.

Positions are HL7's, 1-based. In MSH, MSH-1 is the field separator itself and MSH-2 the
encoding characters; both are returned whole, never split nor unescaped. An absent
field, repetition or component reads as "".

Public API:

- ``Delimiters`` (``Delimiters.of(MSH-1, MSH-2)``), ``delimiters_from_msh(line)``
- ``split_segments(text)`` and ``Segment(line, delimiters)``: ``.name``, ``.field(n)``,
  ``.repetitions(n)``, ``.raw(n, repetition)``, ``.component(n, c, repetition)``,
  ``.value(n, c, repetition)``; ``read_segments(lines, delimiters)``
- ``components``, ``subcomponents``, ``at`` -- splitting a raw value, 1-based access
- ``unescape`` (delimiter and hex escapes) and ``unescape_text`` (also formatting)
- data types: ``timestamp`` (DTM/TS), ``date_value`` (DT), ``hd_name`` /
  ``nested_hd_name`` (HD), ``entity_identifier`` (EI), ``person`` (XCN ->
  ``ExtendedPerson``), ``identifier`` (CX -> ``ExtendedCompositeId``)
- ``PLACER_ORDER_NUMBER_FIELDS`` / ``FILLER_ORDER_NUMBER_FIELDS``: where an order's
  numbers are read, in order of preference, for orders and results alike
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

__all__ = [
    "FILLER_ORDER_NUMBER_FIELDS",
    "PLACER_ORDER_NUMBER_FIELDS",
    "Delimiters",
    "ExtendedCompositeId",
    "ExtendedPerson",
    "Segment",
    "at",
    "components",
    "date_value",
    "delimiters_from_msh",
    "entity_identifier",
    "hd_name",
    "identifier",
    "nested_hd_name",
    "person",
    "read_segments",
    "split_segments",
    "subcomponents",
    "timestamp",
    "unescape",
    "unescape_text",
]

# The placer order number is ORC-2 of the order's ORC (the ORC before the OBR, in
# document order) if valued, else OBR-2; the filler order number ORC-3, else OBR-3.
# One rule for orders and results: the placer number keys the order-to-result exchange,
# so a result read in another order than its order would open a second exchange.
PLACER_ORDER_NUMBER_FIELDS: tuple[tuple[str, int], ...] = (("ORC", 2), ("OBR", 2))
FILLER_ORDER_NUMBER_FIELDS: tuple[tuple[str, int], ...] = (("ORC", 3), ("OBR", 3))


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The five delimiters a message declares in MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def of(cls, field_separator: str, encoding_characters: str) -> Delimiters:
        """From MSH-1 and MSH-2 (component, repetition, escape, subcomponent, [truncation])."""
        return cls(
            field_separator,
            encoding_characters[0],
            encoding_characters[1],
            encoding_characters[2],
            encoding_characters[3],
        )


def delimiters_from_msh(line: str) -> Delimiters | None:
    """The delimiters of an MSH line, or None when MSH-2 is missing.

    Lenient on purpose: which delimiters a sender may use is the gateway's decision
    (header.py answers AR for unusable ones); a parser reads what the message says.
    """
    if len(line) < 8 or line[7] == line[3]:
        return None
    return Delimiters.of(line[3], line[4:8])


def split_segments(text: str) -> list[str]:
    """Segments of CR-separated text; trailing blanks and empty segments are dropped.

    They are transport noise the gateway may leave behind and carry no data.
    """
    return [line.rstrip() for line in text.split("\r") if line.strip()]


class Segment:
    """One segment's fields, split once, read by HL7 position."""

    __slots__ = ("_delimiters", "_fields", "_whole", "name")

    def __init__(self, line: str, delimiters: Delimiters) -> None:
        fields = line.split(delimiters.field)
        self.name = fields[0]
        if self.name == "MSH":
            # MSH-1 is the separator the split consumed: put it back, so that a field's
            # position is its index in every segment. MSH-1 and MSH-2 are never split.
            fields.insert(1, delimiters.field)
            self._whole = 2
        else:
            self._whole = 0
        self._fields = fields
        self._delimiters = delimiters

    def __repr__(self) -> str:
        # Segment id and size only: field values may be patient data.
        return f"<Segment {self.name} with {len(self._fields) - 1} fields>"

    def field(self, position: int) -> str:
        """The raw field, all repetitions ("" when absent)."""
        fields = self._fields
        return fields[position] if 0 < position < len(fields) else ""

    def repetitions(self, position: int) -> list[str]:
        """The raw repetitions of a field, empty ones included ([] when absent)."""
        fields = self._fields
        if not 0 < position < len(fields):
            return []
        if position <= self._whole:
            return [fields[position]]
        return fields[position].split(self._delimiters.repetition)

    def raw(self, position: int, repetition: int = 1) -> str:
        """One raw repetition of a field ("" when absent)."""
        reps = self.repetitions(position)
        return reps[repetition - 1] if 0 < repetition <= len(reps) else ""

    def component(self, position: int, component: int = 1, repetition: int = 1) -> str:
        """One raw (still escaped) component; MSH-1 and MSH-2 are returned whole."""
        fields = self._fields
        if not 0 < position < len(fields):
            return ""
        if position <= self._whole:
            return fields[position]
        reps = fields[position].split(self._delimiters.repetition)
        if not 0 < repetition <= len(reps):
            return ""
        parts = reps[repetition - 1].split(self._delimiters.component)
        return parts[component - 1] if 0 < component <= len(parts) else ""

    def value(self, position: int, component: int = 1, repetition: int = 1) -> str:
        """One component with its delimiter and hex escapes resolved (see ``unescape``);
        MSH-1 and MSH-2 are returned whole."""
        raw = self.component(position, component, repetition)
        if position <= self._whole or self._delimiters.escape not in raw:
            return raw
        return _resolve(raw, self._delimiters, render_formatting=False)


def read_segments(lines: Iterable[str], delimiters: Delimiters) -> list[Segment]:
    """Every line that is a segment; a line whose fourth character is not the field
    separator is not one (e.g. a wrapped continuation line) and is left out."""
    separator = delimiters.field
    return [Segment(line, delimiters) for line in lines if line[3:4] == separator]


def components(raw: str, delimiters: Delimiters) -> list[str]:
    """A raw field repetition split into its raw components."""
    return raw.split(delimiters.component)


def subcomponents(raw: str, delimiters: Delimiters) -> list[str]:
    """A raw component split into its raw subcomponents."""
    return raw.split(delimiters.subcomponent)


def at(parts: Sequence[str], position: int) -> str:
    """HL7 positions are 1-based; an absent trailing part is empty."""
    return parts[position - 1] if 0 < position <= len(parts) else ""


# --- escapes (v2.5.1 section 2.7) ---------------------------------------------------

_HEX_ESCAPE = re.compile(r"X((?:[0-9A-Fa-f]{2})+)")


def unescape(raw: str, delimiters: Delimiters) -> str:
    """Resolve delimiter escapes (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\) and hex data (\\Xhh..\\).

    Formatting and character-set escapes (\\H\\, \\N\\, \\.br\\, \\C..\\, \\M..\\) and any
    unknown or unterminated sequence are kept verbatim: they are data, not ours to guess.
    Hex data is read as Latin-1 bytes, one character per pair of digits.
    """
    if delimiters.escape not in raw:
        return raw
    return _resolve(raw, delimiters, render_formatting=False)


def unescape_text(raw: str, delimiters: Delimiters) -> str:
    """As ``unescape``, and formatting rendered as text: \\.br\\ becomes a line break,
    \\H\\ and \\N\\ (highlight on/off) carry no data and are dropped."""
    if delimiters.escape not in raw:
        return raw
    return _resolve(raw, delimiters, render_formatting=True)


def _resolve(raw: str, d: Delimiters, *, render_formatting: bool) -> str:
    escape = d.escape
    out: list[str] = []
    i = 0
    while True:
        start = raw.find(escape, i)
        end = raw.find(escape, start + 1) if start != -1 else -1
        if end == -1:
            out.append(raw[i:])
            return "".join(out)
        out.append(raw[i:start])
        body = raw[start + 1 : end]
        if body == "F":
            out.append(d.field)
        elif body == "S":
            out.append(d.component)
        elif body == "T":
            out.append(d.subcomponent)
        elif body == "R":
            out.append(d.repetition)
        elif body == "E":
            out.append(escape)
        elif body[:1] == "X" and (hex_data := _HEX_ESCAPE.fullmatch(body)):
            out.append(bytes.fromhex(hex_data.group(1)).decode("latin-1"))
        elif render_formatting and body in ("H", "N"):
            pass
        elif render_formatting and body == ".br":
            out.append("\n")
        else:
            out.append(raw[start : end + 1])
        i = end + 1


# --- data types ----------------------------------------------------------------------

# DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]; the precision is however many
# parts the sender sent.
_DTM = re.compile(
    r"(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.\d{1,4})?(?P<tz>[+-]\d{4})?"
)


def timestamp(raw: str, delimiters: Delimiters) -> datetime | None:
    """DTM/TS (first component), to the second; missing parts read as their start.

    Without an offset the value stays naive: the sender's local time, never assumed to
    be UTC. Anything else, or an impossible date, gives None.
    """
    value = at(components(raw, delimiters), 1).strip()
    match = _DTM.fullmatch(value)
    if not match:
        return None
    g = match.groupdict()
    tz = None
    if g["tz"]:
        sign = 1 if g["tz"][0] == "+" else -1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][3:5])
        if hours > 23 or minutes > 59:  # -9900 is no offset: an impossible value
            return None
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
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


def date_value(raw: str, delimiters: Delimiters) -> date | None:
    """DT (first component, YYYYMMDD; a time after it is ignored); None when not a date."""
    value = at(components(raw, delimiters), 1).strip()
    if len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def hd_name(raw: str, delimiters: Delimiters) -> str:
    """HD as a field (MSH-4): namespace id, else universal id."""
    parts = components(raw, delimiters)
    return unescape_text(at(parts, 1) or at(parts, 2), delimiters)


def nested_hd_name(raw: str, delimiters: Delimiters) -> str:
    """HD inside a component (CX-4, XCN-9, PL-4): namespace id, else universal id."""
    parts = subcomponents(raw, delimiters)
    return unescape_text(at(parts, 1) or at(parts, 2), delimiters)


def entity_identifier(raw: str, delimiters: Delimiters) -> tuple[str | None, str]:
    """EI (ORC-2/3, OBR-2/3): the entity id (None when empty) and the namespace that
    issued it (EI-2, else the universal id EI-3), both stripped."""
    parts = components(raw, delimiters)
    number = unescape_text(at(parts, 1), delimiters).strip()
    namespace = unescape_text(at(parts, 2) or at(parts, 3), delimiters).strip()
    return (number or None, namespace)


@dataclass(frozen=True, slots=True)
class ExtendedPerson:
    """XCN, the parts a clinician is addressed by; values unescaped, not stripped."""

    identifier: str
    family_name: str
    given_name: str
    assigning_authority: str


def person(raw: str, delimiters: Delimiters) -> ExtendedPerson:
    """XCN: 1 id, 2 family name (FN, first subcomponent), 3 given name, 9 assigning
    authority (HD)."""
    parts = components(raw, delimiters)
    return ExtendedPerson(
        identifier=unescape_text(at(parts, 1), delimiters),
        family_name=unescape_text(at(subcomponents(at(parts, 2), delimiters), 1), delimiters),
        given_name=unescape_text(at(parts, 3), delimiters),
        assigning_authority=nested_hd_name(at(parts, 9), delimiters),
    )


@dataclass(frozen=True, slots=True)
class ExtendedCompositeId:
    """CX, the parts that identify a patient record; values unescaped, not stripped."""

    identifier: str
    assigning_authority: str
    identifier_type: str


def identifier(raw: str, delimiters: Delimiters) -> ExtendedCompositeId:
    """CX: 1 id, 4 assigning authority (HD), 5 identifier type code (HL7 table 0203)."""
    parts = components(raw, delimiters)
    return ExtendedCompositeId(
        identifier=unescape_text(at(parts, 1), delimiters),
        assigning_authority=nested_hd_name(at(parts, 4), delimiters),
        identifier_type=unescape_text(at(parts, 5), delimiters),
    )
