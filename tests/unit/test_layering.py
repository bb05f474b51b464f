"""Rules of the layout that a reviewer would otherwise have to remember (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "adapters", "mappings", "activities", "workflows", "exchanges", "workers")


def project_modules() -> list[Path]:
    return [path for package in PACKAGES for path in sorted((PROJECT / package).rglob("*.py"))]


def imports_of(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from module import name`` in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.module or "", alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]


def test_no_underscore_private_name_is_imported_across_modules() -> None:
    offenders = [
        f"{path.relative_to(PROJECT)}: from {module} import {name}"
        for path in [*project_modules(), *sorted((PROJECT / "tests").rglob("*.py"))]
        for module, name in imports_of(path)
        if module.split(".")[0] in PACKAGES and name.startswith("_")
    ]
    assert offenders == []


def test_adapters_and_mappings_know_nothing_of_temporal() -> None:
    offenders = []
    for package in ("adapters", "mappings", "models"):
        for path in sorted((PROJECT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                offenders += [
                    f"{path.relative_to(PROJECT)}: {name}"
                    for name in names
                    if name.split(".")[0] in ("temporalio", "workflows", "activities", "workers")
                ]
    assert offenders == []
