"""Versioned lab mapping data (local code -> LOINC, v2 tables -> FHIR) and lookups on it.

Pure: reads package files only. See README.md in this folder for the rules.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources
from typing import Any
from urllib.parse import quote

from rapidfuzz import fuzz, process, utils

from models.lab import CodedConcept, LabObservation, LabResult
from models.review import UnmappedObservation

__all__ = [
    "CriticalRange",
    "LabMapping",
    "LoincCandidate",
    "LoincConcept",
    "load_lab_mapping",
    "loinc_candidates",
    "unmapped_codes",
    "unmapped_observations",
]

LOINC_V2_SYSTEM = "LN"
LOCAL_V2_SYSTEM = "L"
# What a URN's name part may hold as is (RFC 8141's pchar without "%", which starts an
# escape): anything else in a sender's coding system name is percent-encoded.
_URN_SAFE = "-._~!$&'()*+,;=:@/"


@dataclass(frozen=True)
class LoincConcept:
    code: str
    display: str
    ucum_unit: str = ""


@dataclass(frozen=True)
class CriticalRange:
    """Critical (panic) limits of one LOINC code, in one UCUM unit: outside is critical."""

    low: float | None
    high: float | None
    unit: str


PATIENT_BY_IDENTIFIER = "reference-by-identifier"
PATIENT_CREATE_IF_ABSENT = "create-if-absent"


@dataclass(frozen=True)
class LabMapping:
    """One mapping version: ``local_to_loinc.<v>.csv`` + ``v2_to_fhir.<v>.toml``."""

    version: str
    local_to_loinc: dict[tuple[str, str], LoincConcept]
    coding_systems: dict[str, str]
    local_system_prefix: str
    identifier_systems: dict[str, str]
    observation_status: dict[str, str]
    report_status: dict[str, str]
    interpretation_system: str
    interpretation_codes: frozenset[str]
    interpretation_display: dict[str, str]
    critical_flags: frozenset[str]
    priority: dict[str, str]
    task_texts: dict[str, str]
    naive_timestamp_offset: str
    ucum_units: frozenset[str]
    unit_aliases: dict[str, str]
    mapping_tag_system: str
    mapping_tag_code: str
    # LOINC code -> critical limits (v2 on); empty in v1, which decided by OBX-8 flags only.
    critical_ranges: dict[str, CriticalRange]
    # The report identifier includes OBR-4 (v2 on): one report per OBR group.
    report_per_service: bool = False
    # How results and orders name their patient (v2 on: "create-if-absent", a conditional
    # create from the whole PID and literal references); v1 refers by identifier only.
    patient_write: str = PATIENT_BY_IDENTIFIER
    # The patient-sync mapping version that builds that Patient, so a lab-created Patient
    # is the one an A28 would create.
    patient_mapping_version: str = "v1"

    def to_loinc(self, system: str, code: str) -> LoincConcept | None:
        """LOINC for one (v2 coding system, code); an ``LN`` code is already LOINC."""
        if not code:
            return None
        system = system or LOCAL_V2_SYSTEM
        if system == LOINC_V2_SYSTEM:
            return LoincConcept(code=code, display="")
        return self.local_to_loinc.get((system, code))

    def loinc_for(self, concept: CodedConcept) -> LoincConcept | None:
        """LOINC for a CWE: primary coding first, then the alternate (CWE-4..6)."""
        primary = self.to_loinc(concept.system, concept.code)
        if primary is not None:
            return primary if primary.display else LoincConcept(primary.code, concept.text)
        if concept.alternate_code:
            alternate = self.to_loinc(concept.alternate_system, concept.alternate_code)
            if alternate is not None:
                return (
                    alternate
                    if alternate.display
                    else LoincConcept(alternate.code, concept.alternate_text)
                )
        return None

    def system_uri(self, v2_system: str) -> str:
        """FHIR Coding.system for a v2 coding system; unknown ones are sender-local, their
        name percent-encoded: CWE-3 is free text in real feeds ("Local Lab"), and a space
        or a non-ASCII letter would make the system an invalid `uri`."""
        v2_system = v2_system or LOCAL_V2_SYSTEM
        known = self.coding_systems.get(v2_system)
        if known:
            return known
        return _local_system_uri(self.local_system_prefix, v2_system)

    def identifier_system(self, kind: str) -> str:
        return self.identifier_systems[kind]

    def ucum(self, unit: str) -> str | None:
        """UCUM code for an OBX-6 unit, or None when it is not (known) UCUM."""
        normalised = self.unit_aliases.get(unit, unit)
        return normalised if normalised in self.ucum_units else None


@lru_cache(maxsize=256)
def _local_system_uri(prefix: str, v2_system: str) -> str:
    # Quoted once per system name, not per coding: a feed repeats the same few.
    return prefix + quote(v2_system, safe=_URN_SAFE)


def _read_text(name: str) -> str:
    return resources.files("mappings.order_to_result").joinpath(name).read_text(encoding="utf-8")


def _str_dict(table: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(table).items() if not isinstance(v, dict)}


def load_lab_mapping(version: str = "v1") -> LabMapping:
    """Load one mapping version (cached: the files are package data and never change at runtime)."""
    return _load(version)


@cache
def _load(version: str) -> LabMapping:
    rows = csv.DictReader(io.StringIO(_read_text(f"local_to_loinc.{version}.csv")))
    local_to_loinc = {
        (row["local_system"].strip() or LOCAL_V2_SYSTEM, row["local_code"].strip()): LoincConcept(
            code=row["loinc_code"].strip(),
            display=row["loinc_display"].strip(),
            ucum_unit=(row.get("ucum_unit") or "").strip(),
        )
        for row in rows
    }
    data = tomllib.loads(_read_text(f"v2_to_fhir.{version}.toml"))
    if data.get("version") != version:
        raise ValueError(f"v2_to_fhir.{version}.toml declares version {data.get('version')!r}")
    patient_write = str(data.get("patient", {}).get("write", PATIENT_BY_IDENTIFIER))
    if patient_write not in (PATIENT_BY_IDENTIFIER, PATIENT_CREATE_IF_ABSENT):
        raise ValueError(f"v2_to_fhir.{version}.toml: unknown patient.write {patient_write!r}")
    coding = dict(data["coding_systems"])
    local_prefix = str(coding.pop("local_prefix"))
    interpretation = data["interpretation"]
    critical = data["critical"]
    return LabMapping(
        version=version,
        local_to_loinc=local_to_loinc,
        coding_systems=_str_dict(coding),
        local_system_prefix=local_prefix,
        identifier_systems=_str_dict(data["identifier_systems"]),
        observation_status=_str_dict(data["observation_status"]),
        report_status=_str_dict(data["report_status"]),
        interpretation_system=str(interpretation["system"]),
        interpretation_codes=frozenset(str(c) for c in interpretation["codes"]),
        interpretation_display=_str_dict(interpretation.get("display", {})),
        critical_flags=frozenset(str(f) for f in critical["flags"]),
        priority=_str_dict(data["priority"]),
        task_texts=_str_dict(data["task"]),
        naive_timestamp_offset=str(data["time"]["naive_timestamp_offset"]),
        ucum_units=frozenset(str(u) for u in data["units"]["ucum"]),
        unit_aliases=_str_dict(data["units"]["aliases"]),
        mapping_tag_system=str(data["mapping_tag"]["system"]),
        mapping_tag_code=str(data["mapping_tag"]["code_prefix"]) + version,
        critical_ranges={
            str(loinc): CriticalRange(
                low=None if "low" not in limits else float(limits["low"]),
                high=None if "high" not in limits else float(limits["high"]),
                unit=str(limits["unit"]),
            )
            for loinc, limits in dict(critical.get("ranges", {})).items()
        },
        report_per_service=bool(data.get("report", {}).get("per_service", False)),
        patient_write=patient_write,
        patient_mapping_version=str(data.get("patient", {}).get("mapping", "v1")),
    )


# What CWE-3 can never hold as read: the reader splits on these (or they are escaped).
_HL7_DELIMITERS = frozenset("|^~\\&")


def concept_map_problems(version: str) -> list[str]:
    """Rows of ``local_to_loinc.<version>.csv`` that can never match or cannot be trusted,
    one sentence each (`make test` requires none): a system the v2 reader can never deliver
    (a delimiter in it, or spaces around it), LOINC-coded input (used as is, the row is
    dead), a (system, code) pair given twice (the later row silently wins), a malformed
    LOINC code, and a row that does not say where it came from."""
    name = f"local_to_loinc.{version}.csv"
    return concept_rows_problems(_read_text(name), name)


def concept_rows_problems(text: str, name: str) -> list[str]:
    """``concept_map_problems`` of a concept map's CSV text."""
    problems: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        where = f"{name} line {line}"
        system, code = row["local_system"], row["local_code"].strip()
        if system != system.strip() or _HL7_DELIMITERS & set(system):
            problems.append(f"{where}: system {system!r} can never come out of a CWE-3")
        if (system.strip() or LOCAL_V2_SYSTEM) == "LN":
            problems.append(f"{where}: LOINC-coded input needs no row; it can never be used")
        key = (system.strip() or LOCAL_V2_SYSTEM, code)
        if key in seen:
            problems.append(f"{where}: {key} repeats line {seen[key]}, which it overrides")
        seen.setdefault(key, line)
        if not re.fullmatch(r"\d{1,7}-\d", row["loinc_code"].strip()):
            problems.append(f"{where}: {row['loinc_code']!r} is not a LOINC code")
        if not (row.get("source") or "").strip():
            problems.append(f"{where}: no source: say where the row came from")
    return problems


def unmapped_codes(result: LabResult, mapping: LabMapping) -> list[str]:
    """``system|code`` of the report and observation codes that have no LOINC.

    Codes are not PHI, so this list may go into review reasons and logs.
    Order is first appearance; duplicates are listed once.
    """
    unmapped: list[str] = []
    concepts = [result.universal_service_id, *(obs.code for obs in result.observations)]
    for concept in concepts:
        if mapping.loinc_for(concept) is None:
            key = f"{concept.system or LOCAL_V2_SYSTEM}|{concept.code}"
            if key not in unmapped:
                unmapped.append(key)
    return unmapped


def _value_text(observation: LabObservation) -> str:
    """OBX-5 as a reviewer reads it: comparator and number, text, or the coded answer."""
    if observation.numeric_value is not None:
        return f"{observation.comparator or ''}{observation.numeric_value:g}"
    if observation.coded_value is not None:
        return observation.coded_value.text or observation.coded_value.code
    return observation.string_value or ""


def unmapped_observations(
    results: list[LabResult], unmapped: list[str]
) -> tuple[UnmappedObservation, ...]:
    """The report and observation codes listed in ``unmapped`` (``system|code``, as
    unmapped_codes gives them), each once: the first observation line with that code (its
    value and unit), else the report code (OBR-4, no value)."""
    wanted = set(unmapped)
    found: dict[str, UnmappedObservation] = {}
    for result in results:
        lines: list[tuple[CodedConcept, LabObservation | None]] = [
            (result.universal_service_id, None),
            *((obs.code, obs) for obs in result.observations),
        ]
        for concept, observation in lines:
            key = f"{concept.system or LOCAL_V2_SYSTEM}|{concept.code}"
            if key not in wanted or (key in found and (found[key].value or observation is None)):
                continue
            found[key] = UnmappedObservation(
                code=concept.code,
                coding_system=concept.system or LOCAL_V2_SYSTEM,
                text=concept.text,
                value=_value_text(observation) if observation else "",
                unit=observation.units if observation else "",
            )
    return tuple(found.values())


@dataclass(frozen=True)
class LoincCandidate:
    concept: LoincConcept
    # 0-100: how alike the LOINC display and the local text read (rapidfuzz
    # token_set_ratio: shared words, in any order).
    similarity: float


def loinc_candidates(text: str, mapping: LabMapping, limit: int = 5) -> list[LoincCandidate]:
    """The map's LOINC concepts whose display text reads most like ``text`` (a local
    code's OBX-3.2), best first: what a reviewer would map the local code to."""
    concepts = {concept.code: concept for concept in mapping.local_to_loinc.values()}
    if not text.strip() or not concepts:
        return []
    ranked = process.extract(
        text,
        {code: concept.display for code, concept in concepts.items()},
        scorer=fuzz.token_set_ratio,
        processor=utils.default_process,
        limit=limit,
    )
    return [LoincCandidate(concepts[code], round(score, 1)) for _display, score, code in ranked]
