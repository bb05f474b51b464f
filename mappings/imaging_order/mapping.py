"""Reading the imaging mapping (imaging_to_fhir.v<N>.toml): one frozen object per version."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from mappings.versioned import read_version, str_dict

_PACKAGE = "mappings.imaging_order"
_STEM = "imaging_to_fhir"


@dataclass(frozen=True)
class ImagingMapping:
    version: str
    tag_system: str
    tag_code: str
    diagnostic_sections: frozenset[str]
    procedure_codes: frozenset[str]
    modality_of_section: dict[str, str]
    modality_of_procedure: dict[str, str]
    station_of_modality: dict[str, str]
    systems: dict[str, str]
    imaging_study: dict[str, str]
    endpoint: dict[str, str]


@lru_cache(maxsize=8)
def load_imaging_mapping(version: str) -> ImagingMapping:
    """Raises ValueError naming the known versions for an unknown one."""
    data = read_version(_PACKAGE, _STEM, version, what="imaging")
    orders = data["imaging_orders"]
    return ImagingMapping(
        version=version,
        tag_system=data["mapping_tag"]["system"],
        tag_code=f"{data['mapping_tag']['code_prefix']}{version}",
        diagnostic_sections=frozenset(s.upper() for s in orders["diagnostic_sections"]),
        procedure_codes=frozenset(orders["procedure_codes"]),
        modality_of_section=str_dict(data["modality_of_section"]),
        modality_of_procedure=str_dict(data["modality_of_procedure"]),
        station_of_modality=str_dict(data["scheduled_station"]),
        systems=str_dict(data["identifier_systems"]),
        imaging_study=str_dict(data["imaging_study"]),
        endpoint=str_dict(data["endpoint"]),
    )
