"""On-demand conformance check of HL7 v2 files against the standard's message structures.

hl7apy knows every version's message structures, segments, fields and data types; the
per-message path needs none of that (adapters/hl7v2/fields.py reads what the exchanges
use), but an interface analyst onboarding a sender does: which segments are missing or
out of place, which fields hold a value of the wrong shape. ``careweave validate`` runs
this on files; it never runs per message.

Each finding names the segment, the field when hl7apy names one, and the line of the
file, so a sender's sample can be fixed where it is wrong.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from hl7apy import load_reference
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Segment
from hl7apy.exceptions import ChildNotFound, HL7apyException
from hl7apy.parser import parse_message
from hl7apy.validation import Validator

from models.errors import Hl7Error

__all__ = ["Finding", "MessageReport", "UnreadableFile", "check_file"]

_BATCH_SEGMENTS = ("FHS", "FTS", "BHS", "BTS")
_NAMED_FIELD = re.compile(r"\b([A-Z][A-Z0-9]{2})_(\d+)\b")
_NAMED_SEGMENT = re.compile(r"\b([A-Z][A-Z0-9]{2})\b")
# hl7apy prints "(it must be None)" when its reference holds no type name: say nothing.
_NO_EXPECTED_TYPE = re.compile(r" \(it must be None\)$")
_NO_DATATYPE = re.compile(r"^Datatype None is not correct for (\S+)$")
# ... and "[None]" for components past the end of the field's data type.
_EXTRA_COMPONENTS = re.compile(
    r"Invalid children detected for <Field (\w+) \((\w+)\) of type (\w+)>: \[None\]"
)


class UnreadableFile(Hl7Error):
    """A file that cannot be read as HL7 v2 text; ``line`` is where reading failed."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}: line {line}: {reason}")


@dataclass(frozen=True)
class Finding:
    severity: Literal["error", "warning"]
    line: int
    segment: str | None
    field: int | None
    text: str

    def where(self) -> str:
        place = self.segment or "message"
        if self.segment and self.field is not None:
            place = f"{self.segment}-{self.field}"
        return f"line {self.line}, {place}"


@dataclass
class MessageReport:
    first_line: int
    message_type: str
    control_id: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


def check_file(path: Path) -> list[MessageReport]:
    """A report per message of the file (several messages, batch headers skipped)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UnreadableFile(path, 1, f"cannot read ({err.strerror})") from None
    text = _decode(path, data)
    messages = list(_messages(text))
    if not messages:
        raise UnreadableFile(path, 1, "no MSH segment: not an HL7 v2 message file")
    return [_check_message(lines) for lines in messages]


def _decode(path: Path, data: bytes) -> str:
    data = data.removeprefix(b"\xef\xbb\xbf")
    header = data.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if b"8859" in header:  # MSH-18 names an ISO 8859 character set
        return data.decode("latin-1")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + data[: err.start].count(b"\r") + 1
        line -= data[: err.start].count(b"\r\n")
        raise UnreadableFile(
            path, line, f"byte 0x{data[err.start]:02x} is not UTF-8 and MSH-18 names no charset"
        ) from None


def _messages(text: str) -> Iterator[list[tuple[int, str]]]:
    """Each message's segments with their line numbers (1-based) in the file."""
    current: list[tuple[int, str]] = []
    for number, raw in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        line = raw.strip("\x0b\x1c").rstrip()
        if not line or line.startswith(_BATCH_SEGMENTS):
            continue
        if line.startswith("MSH"):
            if current:
                yield current
            current = []
        if current or line.startswith("MSH"):
            current.append((number, line))
    if current:
        yield current


def _check_message(lines: list[tuple[int, str]]) -> MessageReport:
    first_line, msh = lines[0]
    fields = msh.split(msh[3:4] or "|") if len(msh) > 3 else []
    report = MessageReport(
        first_line=first_line,
        message_type=fields[8].replace(msh[4:5] or "^", "^") if len(fields) > 8 else "",
        control_id=fields[9] if len(fields) > 9 else "",
    )
    try:
        message = parse_message(
            "\r".join(line for _, line in lines),
            find_groups=True,
            validation_level=VALIDATION_LEVEL.TOLERANT,
        )
    except HL7apyException as err:
        report.findings.append(Finding("error", first_line, None, None, f"cannot parse: {err}"))
        return report
    except Exception as err:  # hl7apy raises plain errors on some malformed input
        report.findings.append(
            Finding("error", first_line, None, None, f"cannot parse ({type(err).__name__})")
        )
        return report

    # Validating each segment alone gives its errors a line; what only the whole message
    # shows (a required segment missing, one too many) is put on the MSH line.
    attributed: set[str] = set()
    occurrences: dict[str, int] = {}
    segment_lines = [(number, line[:3]) for number, line in lines]
    for segment in _segments(message):
        index = occurrences.get(segment.name, 0)
        occurrences[segment.name] = index + 1
        line = _line_of(segment_lines, segment.name, index, default=first_line)
        for severity, text in _validate(segment):
            attributed.add(text)
            report.findings.append(_finding(severity, line, text, segment.name))
    try:
        load_reference(message.name, "Message", message.version)
    except ChildNotFound:
        report.findings.append(
            Finding(
                "error",
                first_line,
                "MSH",
                9,
                f"no message structure {message.name} in HL7 v{message.version}",
            )
        )
    for severity, text in _validate(message):
        if text not in attributed:
            report.findings.append(_finding(severity, first_line, text, None))
    report.findings = _counted(report.findings)
    return report


def _counted(findings: list[Finding]) -> list[Finding]:
    # hl7apy repeats a structure error once per group it finds it in: say it once, counted.
    counts: dict[Finding, int] = {}
    for finding in findings:
        counts[finding] = counts.get(finding, 0) + 1
    return [
        finding if count == 1 else replace(finding, text=f"{finding.text} ({count} times)")
        for finding, count in counts.items()
    ]


def _segments(element: Any) -> Iterator[Segment]:
    for child in element.children:
        if isinstance(child, Segment):
            yield child
        elif isinstance(child, Group) or child.classname == "Group":
            yield from _segments(child)


def _line_of(segment_lines: list[tuple[int, str]], name: str, index: int, default: int) -> int:
    matching = [number for number, segment in segment_lines if segment == name]
    return matching[index] if index < len(matching) else default


def _validate(element: Any) -> list[tuple[Literal["error", "warning"], str]]:
    # hl7apy raises only the first error; its report file lists them all.
    with tempfile.TemporaryDirectory() as folder:
        report_file = Path(folder) / "report.txt"
        try:
            Validator.validate(element, report_file=str(report_file))
        except HL7apyException:
            pass
        except Exception as err:  # a malformed element can trip hl7apy itself
            return [("error", f"cannot validate ({type(err).__name__})")]
        if not report_file.exists():
            return []
        found: list[tuple[Literal["error", "warning"], str]] = []
        for entry in report_file.read_text().splitlines():
            kind, _, text = entry.partition(": ")
            found.append(("error" if kind == "Error" else "warning", text))
        return found


def _finding(
    severity: Literal["error", "warning"], line: int, text: str, segment: str | None
) -> Finding:
    text = _NO_DATATYPE.sub(
        r"\1 holds a value its data type does not allow (or is no field of this version)",
        _NO_EXPECTED_TYPE.sub("", text),
    )
    text = _EXTRA_COMPONENTS.sub(r"\1 (\2) has more components than its type \3 has", text)
    named = _NAMED_FIELD.search(text)
    if named:
        return Finding(severity, line, named.group(1), int(named.group(2)), text)
    if segment is None:
        mentioned = _NAMED_SEGMENT.search(text)
        segment = mentioned.group(1) if mentioned else None
    return Finding(severity, line, segment, None, text)
