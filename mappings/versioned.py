"""Versioned mapping files (``<stem>.v<N>.toml`` package data): which versions exist, and
reading one. A change to what a message maps to is a new file, never an edit, so every
resource can be traced to the mapping that produced it."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from typing import Any

_VERSION = re.compile(r"v[0-9]+")


def available_versions(package: str, stem: str) -> list[str]:
    """Versions of ``<stem>.v<N>.toml`` in ``package``, oldest first."""
    pattern = re.compile(rf"{re.escape(stem)}\.(v[0-9]+)\.toml")
    names = (entry.name for entry in resources.files(package).iterdir())
    found = (pattern.fullmatch(name) for name in names)
    return sorted((match.group(1) for match in found if match), key=lambda v: int(v[1:]))


def read_version(package: str, stem: str, version: str, *, what: str) -> dict[str, Any]:
    """The TOML of one version. Raises ValueError naming the known versions when it does
    not exist, and when the file declares another version than its name."""
    known = available_versions(package, stem)
    if not _VERSION.fullmatch(version) or version not in known:
        raise ValueError(f"unknown {what} mapping version {version!r}; known: {', '.join(known)}")
    file_name = f"{stem}.{version}.toml"
    data = tomllib.loads(resources.files(package).joinpath(file_name).read_text(encoding="utf-8"))
    if data.get("version") != version:
        raise ValueError(f"{file_name} declares version {data.get('version')!r}")
    return data


def str_dict(table: Any) -> dict[str, str]:
    """A TOML table's plain entries as strings (nested tables left out)."""
    return {str(k): str(v) for k, v in dict(table).items() if not isinstance(v, dict)}
