"""Versioned merge -> FHIR rules (``merge_to_fhir.<version>.toml``).

Pure: reads package files only. See README.md in this folder for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from mappings import versioned

__all__ = ["MergeMapping", "available_versions", "load_merge_mapping"]

_PACKAGE = "mappings.patient_merge"
_STEM = "merge_to_fhir"


@dataclass(frozen=True)
class MergeMapping:
    """One version of the rules: ``merge_to_fhir.<version>.toml``."""

    version: str
    source_link_type: str
    target_link_type: str
    copied_identifier_use: str
    never_repointed: frozenset[str]
    searched_types: tuple[str, ...]
    page_size: int
    match_weights_version: str
    activity_system: str
    activity_code: str
    activity_display: str
    entity_role: str
    agent_type_system: str
    agent_type_code: str
    agent_type_display: str
    agent: str
    # Extension name (merge_source, repointed_path, ...) -> its url.
    extensions: dict[str, str]


def available_versions() -> list[str]:
    return versioned.available_versions(_PACKAGE, _STEM)


def load_merge_mapping(version: str = "v1") -> MergeMapping:
    """One version (cached: package data never changes at runtime). Raises ValueError
    naming the known versions when ``version`` does not exist."""
    return _load(version)


@cache
def _load(version: str) -> MergeMapping:
    data = versioned.read_version(_PACKAGE, _STEM, version, what="patient merge")
    provenance = data["provenance"]
    return MergeMapping(
        version=version,
        source_link_type=str(data["link"]["source"]),
        target_link_type=str(data["link"]["target"]),
        copied_identifier_use=str(data["identifier"]["copied_use"]),
        never_repointed=frozenset(str(t) for t in data["repoint"]["never"]),
        searched_types=tuple(str(t) for t in data["repoint"]["search"]),
        page_size=int(data["repoint"]["page_size"]),
        match_weights_version=str(data["score"]["weights"]),
        activity_system=str(provenance["activity_system"]),
        activity_code=str(provenance["activity_code"]),
        activity_display=str(provenance["activity_display"]),
        entity_role=str(provenance["entity_role"]),
        agent_type_system=str(provenance["agent_type_system"]),
        agent_type_code=str(provenance["agent_type_code"]),
        agent_type_display=str(provenance["agent_type_display"]),
        agent=str(provenance["agent"]),
        extensions=versioned.str_dict(provenance["extensions"]),
    )
