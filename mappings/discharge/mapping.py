"""Load one version of the discharge mapping (data in v2_to_fhir.<version>.toml)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class DischargeMapping:
    version: str
    identifier_systems: dict[str, str]
    coding_systems: dict[str, str]
    disposition_system: str
    disposition_codes: dict[str, str]
    class_system: str
    class_codes: dict[str, str]
    diagnosis_use_system: str
    diagnosis_use: dict[str, str]
    verification_system: str
    verification: dict[str, str]
    naive_timestamp_offset: str
    mapping_tag_system: str
    mapping_tag_code: str


def _strings(table: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(table).items()}


def load_discharge_mapping(version: str = "v1") -> DischargeMapping:
    return _load(version)


@cache
def _load(version: str) -> DischargeMapping:
    try:
        text = (
            resources.files("mappings.discharge")
            .joinpath(f"v2_to_fhir.{version}.toml")
            .read_text(encoding="utf-8")
        )
    except FileNotFoundError:
        raise ValueError(f"no discharge mapping version {version!r}") from None
    data = tomllib.loads(text)
    if data.get("version") != version:
        raise ValueError(f"v2_to_fhir.{version}.toml declares version {data.get('version')!r}")
    return DischargeMapping(
        version=version,
        identifier_systems=_strings(data["identifier_systems"]),
        coding_systems=_strings(data["coding_systems"]),
        disposition_system=str(data["discharge_disposition"]["system"]),
        disposition_codes=_strings(data["discharge_disposition"]["codes"]),
        class_system=str(data["encounter_class"]["system"]),
        class_codes=_strings(data["encounter_class"]["codes"]),
        diagnosis_use_system=str(data["diagnosis_type"]["use_system"]),
        diagnosis_use=_strings(data["diagnosis_type"]["use"]),
        verification_system=str(data["diagnosis_type"]["verification_system"]),
        verification=_strings(data["diagnosis_type"]["verification"]),
        naive_timestamp_offset=str(data["time"]["naive_timestamp_offset"]),
        mapping_tag_system=str(data["mapping_tag"]["system"]),
        mapping_tag_code=str(data["mapping_tag"]["code_prefix"]) + version,
    )
