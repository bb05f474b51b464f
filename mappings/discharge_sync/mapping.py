"""Versioned ADT -> FHIR mapping data (``discharge_to_fhir.<version>.toml``) and lookups on it.

Pure: reads package files only. See README.md in this folder for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from mappings import versioned

__all__ = ["AdtMapping", "CodedValue", "available_versions", "load_adt_mapping"]

_PACKAGE = "mappings.discharge_sync"
_STEM = "discharge_to_fhir"
# [patient] write: how the transaction writes the Patient (see discharge_to_fhir.v3.toml).
PATIENT_REPLACE = "replace"
PATIENT_CREATE_IF_ABSENT = "create-if-absent"
_PATIENT_WRITES = (PATIENT_REPLACE, PATIENT_CREATE_IF_ABSENT)


@dataclass(frozen=True)
class CodedValue:
    system: str
    code: str


@dataclass(frozen=True)
class AdtMapping:
    """One mapping version: ``discharge_to_fhir.<version>.toml``."""

    version: str
    identifier_systems: dict[str, str]
    coding_systems: dict[str, str]
    disposition_system: str
    disposition_codes: dict[str, str]
    class_system: str
    class_codes: dict[str, str]
    class_unknown: CodedValue
    diagnosis_use_system: str
    diagnosis_use: dict[str, str]
    verification_system: str
    verification: dict[str, str]
    administrative_sex: dict[str, str]
    naive_timestamp_offset: str
    # v2: an A08 after the discharge keeps the Encounter finished (see the TOML).
    update_keeps_discharge: bool
    mapping_tag_system: str
    mapping_tag_code: str
    # v3: "create-if-absent", the Patient is created when missing and never written over;
    # v1, v2: "replace" (a conditional PUT of the whole Patient).
    patient_write: str = PATIENT_REPLACE

    def identifier_system(self, kind: str) -> str:
        return self.identifier_systems[kind]

    def diagnosis_system(self, v2_system: str) -> str | None:
        """FHIR Coding.system for DG1-3.3, or None: the code then stays text only."""
        return self.coding_systems.get(v2_system.strip().upper())

    def disposition(self, v2_code: str) -> CodedValue | None:
        """PV1-36 (table 0112) as a discharge-disposition coding, or None when not mapped."""
        code = self.disposition_codes.get(v2_code.strip())
        return CodedValue(self.disposition_system, code) if code else None

    def encounter_class(self, v2_class: str) -> CodedValue:
        """PV1-2 (table 0004) as Encounter.class; required in R4, so UNK when not mapped."""
        code = self.class_codes.get(v2_class.strip().upper())
        return CodedValue(self.class_system, code) if code else self.class_unknown

    def diagnosis_role(self, diagnosis_type: str) -> CodedValue | None:
        code = self.diagnosis_use.get(diagnosis_type)
        return CodedValue(self.diagnosis_use_system, code) if code else None

    def verification_status(self, diagnosis_type: str) -> CodedValue | None:
        code = self.verification.get(diagnosis_type)
        return CodedValue(self.verification_system, code) if code else None


def available_versions() -> list[str]:
    return versioned.available_versions(_PACKAGE, _STEM)


def load_adt_mapping(version: str = "v1") -> AdtMapping:
    """Load one mapping version (cached: the files are package data and never change at runtime).

    Raises ValueError naming the known versions when ``version`` does not exist.
    """
    return _load(version)


@cache
def _load(version: str) -> AdtMapping:
    data = versioned.read_version(_PACKAGE, _STEM, version, what="ADT")
    encounter_class = data["encounter_class"]
    diagnosis_type = data["diagnosis_type"]
    patient_write = str(data.get("patient", {}).get("write", PATIENT_REPLACE))
    if patient_write not in _PATIENT_WRITES:
        raise ValueError(
            f"discharge_to_fhir.{version}.toml: [patient] write {patient_write!r} is not one of "
            f"{', '.join(_PATIENT_WRITES)}"
        )
    return AdtMapping(
        version=version,
        identifier_systems=versioned.str_dict(data["identifier_systems"]),
        # Keys are compared upper-case: senders differ in case (I10, i10).
        coding_systems={
            k.upper(): v for k, v in versioned.str_dict(data["coding_systems"]).items()
        },
        disposition_system=str(data["discharge_disposition"]["system"]),
        disposition_codes=versioned.str_dict(data["discharge_disposition"]["codes"]),
        class_system=str(encounter_class["system"]),
        class_codes=versioned.str_dict(encounter_class["codes"]),
        class_unknown=CodedValue(
            str(encounter_class["unknown_system"]), str(encounter_class["unknown_code"])
        ),
        diagnosis_use_system=str(diagnosis_type["use_system"]),
        diagnosis_use=versioned.str_dict(diagnosis_type["use"]),
        verification_system=str(diagnosis_type["verification_system"]),
        verification=versioned.str_dict(diagnosis_type["verification"]),
        administrative_sex=versioned.str_dict(data["administrative_sex"]),
        naive_timestamp_offset=str(data["time"]["naive_timestamp_offset"]),
        # Tables added in later versions: absent from v1, whose behaviour stays as it was.
        update_keeps_discharge=bool(data.get("update_after_discharge", {}).get("keep_discharge")),
        mapping_tag_system=str(data["mapping_tag"]["system"]),
        mapping_tag_code=str(data["mapping_tag"]["code_prefix"]) + version,
        patient_write=patient_write,
    )
