"""FHIR R4 adapter: an async client for any R4 base URL; knows nothing of Temporal."""

from adapters.fhir.client import FhirClient
from adapters.fhir.errors import FhirError, FhirRejectedError, FhirRetryableError

__all__ = ["FhirClient", "FhirError", "FhirRejectedError", "FhirRetryableError"]
