"""Versioned PID -> FHIR Patient mapping data (``patient_to_fhir.<version>.toml``).

Pure: reads package files only. See README.md in this folder for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from mappings import versioned

__all__ = ["PatientMapping", "available_versions", "load_patient_mapping"]

_PACKAGE = "mappings.patient_sync"
_STEM = "patient_to_fhir"


@dataclass(frozen=True)
class PatientMapping:
    """One mapping version: ``patient_to_fhir.<version>.toml``."""

    version: str
    patient_system: str
    identifier_type_system: str
    administrative_sex: dict[str, str]
    name_use: dict[str, str]
    first_name_use: str
    server_name_without_use: str
    address_use: dict[str, str]
    telecom_use: dict[str, str]
    telecom_default_use: dict[str, str]
    telecom_system: dict[str, str]
    telecom_system_by_use: dict[str, str]
    telecom_use_by_equipment: dict[str, str]
    null_removes_birth_date: bool
    null_removes_gender: bool
    # "PID-11" / "PID-13" / "PID-14" -> uses whose entries an explicit null removes.
    null_removes_uses: dict[str, tuple[str, ...]]
    mapping_tag_system: str
    mapping_tag_code: str


def available_versions() -> list[str]:
    return versioned.available_versions(_PACKAGE, _STEM)


def load_patient_mapping(version: str = "v1") -> PatientMapping:
    """Load one mapping version (cached: package data never changes at runtime).

    Raises ValueError naming the known versions when ``version`` does not exist.
    """
    return _load(version)


@cache
def _load(version: str) -> PatientMapping:
    data = versioned.read_version(_PACKAGE, _STEM, version, what="patient")
    name_use = data["name_use"]
    explicit_null = data["explicit_null"]
    return PatientMapping(
        version=version,
        patient_system=str(data["identifier_systems"]["patient"]),
        identifier_type_system=str(data["identifier_type"]["system"]),
        administrative_sex=versioned.str_dict(data["administrative_sex"]),
        name_use={
            k: v
            for k, v in versioned.str_dict(name_use).items()
            if k not in ("first_without_type", "server_name_without_use")
        },
        first_name_use=str(name_use["first_without_type"]),
        server_name_without_use=str(name_use["server_name_without_use"]),
        address_use=versioned.str_dict(data["address_use"]),
        telecom_use=versioned.str_dict(data["telecom_use"]),
        telecom_default_use=versioned.str_dict(data["telecom_default_use"]),
        telecom_system=versioned.str_dict(data["telecom_system"]),
        telecom_system_by_use=versioned.str_dict(data["telecom_system_by_use"]),
        telecom_use_by_equipment=versioned.str_dict(data["telecom_use_by_equipment"]),
        null_removes_birth_date=bool(explicit_null["birth_date"]),
        null_removes_gender=bool(explicit_null["gender"]),
        null_removes_uses={
            str(field): tuple(str(use) for use in uses)
            for field, uses in dict(explicit_null["removes_uses"]).items()
        },
        mapping_tag_system=str(data["mapping_tag"]["system"]),
        mapping_tag_code=str(data["mapping_tag"]["code_prefix"]) + version,
    )
