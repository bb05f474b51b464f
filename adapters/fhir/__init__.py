"""FHIR R4 adapter: an async client for any R4 base URL; knows nothing of Temporal."""

from adapters.fhir.auth import BearerToken, SmartBackendServices, auth_from_config
from adapters.fhir.client import ConditionalCreate, FhirClient
from adapters.fhir.errors import (
    FhirError,
    FhirPagingError,
    FhirPreconditionFailed,
    FhirRejectedError,
    FhirRetryableError,
    FhirTlsError,
    FhirWriteRaced,
)

__all__ = [
    "BearerToken",
    "ConditionalCreate",
    "FhirClient",
    "FhirError",
    "FhirPagingError",
    "FhirPreconditionFailed",
    "FhirRejectedError",
    "FhirRetryableError",
    "FhirTlsError",
    "FhirWriteRaced",
    "SmartBackendServices",
    "auth_from_config",
]
