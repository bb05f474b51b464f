"""Every error Careweave defines lives under CareweaveError, in one family, so a caller
catches a family (`except ConfigurationError`) instead of listing its members."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import tomllib
from pathlib import Path

import pytest

from adapters.dicom.errors import PacsError
from adapters.fhir.errors import FhirError, FhirRejectedError, FhirRetryableError
from adapters.hl7v2.ack import AckParseError
from adapters.hl7v2.adt_messages import AdtMessageInvalid
from adapters.hl7v2.lab_messages import LabMessageInvalid
from adapters.hl7v2.mllp_client import MllpError
from adapters.payload_crypto import PayloadDecryptError, PayloadKeyError
from adapters.tls import TlsConfigError
from models.destinations import RoutingConfigError
from models.errors import (
    CareweaveError,
    ConfigurationError,
    EngineError,
    Hl7Error,
    RequestRefused,
    SecurityError,
)
from models.fhir_auth import FhirAuthConfigError
from workers.stack import StackError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Exception classes that must not be Careweave errors, each with the reason. None today.
ALLOWED_OUTSIDE: dict[str, str] = {}

FAMILIES = (
    ConfigurationError,
    Hl7Error,
    FhirError,
    MllpError,
    PacsError,
    EngineError,
    SecurityError,
    RequestRefused,
)


def _project_packages() -> list[str]:
    """The packages the distribution ships (pyproject's find include), so a new top-level
    package is walked without editing this test."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in patterns})


def _exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for package_name in _project_packages():
        package = importlib.import_module(package_name)
        names = [package_name] + [
            info.name for info in pkgutil.walk_packages(package.__path__, f"{package_name}.")
        ]
        for name in names:
            module = importlib.import_module(name)
            found += [
                obj
                for obj in vars(module).values()
                if inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == name
            ]
    return found


def test_the_walk_finds_the_known_errors() -> None:
    # Guards the discovery itself: an empty walk would pass the test below vacuously.
    found = set(_exception_classes())
    assert {RoutingConfigError, MllpError, StackError, FhirRejectedError} <= found
    assert len(found) >= 20


def test_every_project_exception_is_a_careweave_error() -> None:
    outside = {
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _exception_classes()
        if not issubclass(cls, CareweaveError)
    }
    assert outside == set(ALLOWED_OUTSIDE), "give each a family in models/errors.py"


def test_every_careweave_error_is_in_exactly_one_family() -> None:
    for cls in _exception_classes():
        if cls is CareweaveError or cls in FAMILIES or not issubclass(cls, CareweaveError):
            continue
        families = [family for family in FAMILIES if issubclass(cls, family)]
        assert len(families) == 1, f"{cls.__qualname__}: {families}"


def test_the_families_hang_directly_from_the_root() -> None:
    for family in FAMILIES:
        assert CareweaveError in family.__bases__, family


@pytest.mark.parametrize(
    ("error", "family", "builtin"),
    [
        # Callers (and pydantic validators) catch these by their built-in class too.
        (RoutingConfigError, ConfigurationError, ValueError),
        (FhirAuthConfigError, ConfigurationError, ValueError),
        (TlsConfigError, ConfigurationError, ValueError),
        (PayloadKeyError, ConfigurationError, ValueError),
        (PayloadDecryptError, SecurityError, ValueError),
        (AckParseError, Hl7Error, ValueError),
        (LabMessageInvalid, Hl7Error, ValueError),
        (AdtMessageInvalid, Hl7Error, ValueError),
        (StackError, EngineError, RuntimeError),
        (FhirRetryableError, FhirError, Exception),
    ],
)
def test_a_family_is_added_without_losing_the_built_in_base(
    error: type[Exception], family: type[CareweaveError], builtin: type[Exception]
) -> None:
    assert issubclass(error, family)
    assert issubclass(error, builtin)
