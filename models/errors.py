"""The one root of Careweave's errors, and its families: a caller catches one family.

    CareweaveError
    ├── ConfigurationError   settings, the routing file, TLS files, FHIR credentials, payload keys
    ├── Hl7Error             an HL7 v2 message or ACK that cannot be accepted or read
    ├── FhirError            a FHIR server's failure (adapters/fhir/errors.py: retryable or not)
    ├── MllpError            an MLLP peer's failure (adapters/hl7v2/mllp_client.py)
    ├── EngineError          Temporal or the embedded stack could not take or run the work
    ├── SecurityError        a token or a ciphertext that cannot be trusted
    └── RequestRefused       a reviewer's or operator's request refused, with the reason

FhirError and MllpError live beside the adapters that raise them, which split them further
by what the caller does next. Errors that callers also catch by a built-in class keep it as
a second base (`RoutingConfigError(ConfigurationError, ValueError)`).
"""

from __future__ import annotations


class CareweaveError(Exception):
    """Base of every error Careweave raises on purpose; the message is for an operator."""


class ConfigurationError(CareweaveError):
    """Settings or a file they name cannot be used; the message names the setting or file."""


class Hl7Error(CareweaveError):
    """An HL7 v2 message (or a peer's ACK) cannot be accepted or read as what it claims."""


class EngineError(CareweaveError):
    """The engine could not durably take or run the work (Temporal, the embedded stack)."""


class SecurityError(CareweaveError):
    """A credential or a ciphertext that cannot be trusted: who or what it claims is unproven."""


class RequestRefused(CareweaveError):
    """A person's request (an API call, a quarantine release) is refused; the text says why."""
