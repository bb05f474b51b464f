"""Errors from a FHIR server, split by what the caller should do next."""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """Base for every failure talking to a FHIR server."""


class FhirRetryableError(FhirError):
    """Transport failure, timeout, 429 or 5xx: the same request may succeed later."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class FhirRejectedError(FhirError):
    """The server refused the request (4xx): repeating it unchanged cannot succeed."""

    def __init__(
        self,
        status_code: int,
        outcome: dict[str, Any] | None,
        *,
        diagnostics: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.outcome = outcome
        # `diagnostics` for refusals that are not FHIR's, e.g. an OAuth token endpoint's.
        self.diagnostics = diagnostics or summarize_outcome(outcome)
        super().__init__(f"HTTP {status_code}: {self.diagnostics}")


def summarize_outcome(outcome: dict[str, Any] | None) -> str:
    """Issue codes, texts and element paths from an OperationOutcome.

    Medplum-style and HAPI-style outcomes name the element (``Observation.code``) and
    the rule, not the data, so the summary is safe to log and to show in the workflow
    history; the full outcome stays on the exception for a reviewer.
    """
    if not outcome or outcome.get("resourceType") != "OperationOutcome":
        return "no OperationOutcome in the response"
    parts: list[str] = []
    for issue in outcome.get("issue") or []:
        text = (issue.get("details") or {}).get("text") or issue.get("code") or "error"
        where = ", ".join(issue.get("expression") or issue.get("location") or [])
        parts.append(f"{text} ({where})" if where else str(text))
    return "; ".join(parts) or "OperationOutcome without issues"
