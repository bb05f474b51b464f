"""Versioned PID -> FHIR Patient mapping data (``patient_to_fhir.<version>.toml``).

Pure: reads package files only. See README.md in this folder for the rules.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["PatientMapping", "available_versions", "load_patient_mapping"]

_PACKAGE = "mappings.patient_sync"
_VERSION = re.compile(r"v[0-9]+")
_FILE = re.compile(r"patient_to_fhir\.(v[0-9]+)\.toml")


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


def _str_dict(table: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(table).items() if not isinstance(v, dict)}


def available_versions() -> list[str]:
    names = (entry.name for entry in resources.files(_PACKAGE).iterdir())
    found = (_FILE.fullmatch(name) for name in names)
    return sorted((match.group(1) for match in found if match), key=lambda v: int(v[1:]))


def load_patient_mapping(version: str = "v1") -> PatientMapping:
    """Load one mapping version (cached: package data never changes at runtime).

    Raises ValueError naming the known versions when ``version`` does not exist.
    """
    return _load(version)


@cache
def _load(version: str) -> PatientMapping:
    if not _VERSION.fullmatch(version) or version not in available_versions():
        raise ValueError(
            f"unknown patient mapping version {version!r}; known: {', '.join(available_versions())}"
        )
    text = (
        resources.files(_PACKAGE)
        .joinpath(f"patient_to_fhir.{version}.toml")
        .read_text(encoding="utf-8")
    )
    data = tomllib.loads(text)
    if data.get("version") != version:
        raise ValueError(f"patient_to_fhir.{version}.toml declares version {data.get('version')!r}")
    name_use = data["name_use"]
    explicit_null = data["explicit_null"]
    return PatientMapping(
        version=version,
        patient_system=str(data["identifier_systems"]["patient"]),
        identifier_type_system=str(data["identifier_type"]["system"]),
        administrative_sex=_str_dict(data["administrative_sex"]),
        name_use={
            k: v
            for k, v in _str_dict(name_use).items()
            if k not in ("first_without_type", "server_name_without_use")
        },
        first_name_use=str(name_use["first_without_type"]),
        server_name_without_use=str(name_use["server_name_without_use"]),
        address_use=_str_dict(data["address_use"]),
        telecom_use=_str_dict(data["telecom_use"]),
        telecom_default_use=_str_dict(data["telecom_default_use"]),
        telecom_system=_str_dict(data["telecom_system"]),
        telecom_system_by_use=_str_dict(data["telecom_system_by_use"]),
        telecom_use_by_equipment=_str_dict(data["telecom_use_by_equipment"]),
        null_removes_birth_date=bool(explicit_null["birth_date"]),
        null_removes_gender=bool(explicit_null["gender"]),
        null_removes_uses={
            str(field): tuple(str(use) for use in uses)
            for field, uses in dict(explicit_null["removes_uses"]).items()
        },
        mapping_tag_system=str(data["mapping_tag"]["system"]),
        mapping_tag_code=str(data["mapping_tag"]["code_prefix"]) + version,
    )
