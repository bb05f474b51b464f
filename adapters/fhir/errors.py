"""Errors from a FHIR server, split by what the caller should do next."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from models.errors import CareweaveError


class FhirError(CareweaveError):
    """Base for every failure talking to a FHIR server."""


class FhirRetryableError(FhirError):
    """Transport failure, timeout, 429 or 5xx: the same request may succeed later."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class FhirWriteRaced(FhirRetryableError):
    """A fenced write lost to another writer: the resource changed between our read and our
    write (HTTP 412). The server is up and the request is fine; read again and retry."""


class FhirTlsError(FhirRetryableError):
    """The TLS handshake failed: the server's certificate did not verify, or the server refused
    ours. Retryable like a refused connection: the request itself is fine, and what fixes the
    channel (a renewed certificate, the right CA file, a restart) happens outside it."""


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


class FhirPreconditionFailed(FhirRejectedError):
    """HTTP 412: a version-aware update (If-Match) lost to another writer, or a conditional
    create or update matched more than one resource. The first is worth a fresh read and
    another try; the second is not, which only the caller knows (it knows what it sent)."""


class FhirPagingError(FhirError):
    """A search's ``next`` links never ended (a page repeated, or more pages than the
    caller allows) or pointed away from the server's base URL. Neither retryable nor a
    refusal of what we sent: the server's paging is at fault, and reading on would loop or
    hand our credentials to another host."""


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


# httpx wraps network errors as TransportError, except an ssl.SSLError raised on a read of
# the async (anyio) transport, which arrives bare: a TLS 1.3 server refusing our client
# certificate says so only then. Callers catch both.
TRANSPORT_ERRORS = (httpx.TransportError, ssl.SSLError)


def transport_failure(
    operation: str, err: httpx.TransportError | ssl.SSLError
) -> FhirRetryableError:
    """A network failure, as the retryable error that says what failed; a TLS failure names
    the check (certificate verification, or the server's alert) so that an operator sees
    which certificate to fix instead of a bare ConnectError."""
    if isinstance(err, httpx.TimeoutException):
        return FhirRetryableError(f"{operation}: timed out ({type(err).__name__})")
    causes = _causes(err)
    tls = next((cause for cause in causes if isinstance(cause, ssl.SSLError)), None)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return FhirTlsError(
            f"{operation}: TLS: certificate verification failed: {tls.verify_message}"
        )
    if tls is not None:
        # Under TLS 1.3 a server refusing our client certificate says so only after the
        # handshake, as an alert on our first read (TLSV13_ALERT_CERTIFICATE_REQUIRED).
        return FhirTlsError(f"{operation}: TLS failed: {tls.reason or tls}")
    root = causes[-1]
    if isinstance(root, BrokenPipeError | ConnectionResetError) and _over_https(err):
        # The same refusal when the server has closed the connection before our request was
        # written: the write fails first and the alert is never read.
        return FhirRetryableError(
            f"{operation}: TLS connection closed by the server ({type(root).__name__}), as a "
            "server that requires a client certificate does when it accepts none of ours"
        )
    return FhirRetryableError(f"{operation}: {type(err).__name__}: {err or _describe(root)}")


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and what it wraps (httpx -> httpcore -> anyio -> ssl/OSError), outermost first."""
    chain = [err]
    while len(chain) < 8:
        cause = chain[-1].__cause__ or chain[-1].__context__
        if cause is None or cause in chain:
            break
        chain.append(cause)
    return chain


def _over_https(err: BaseException) -> bool:
    try:
        return isinstance(err, httpx.TransportError) and err.request.url.scheme == "https"
    except RuntimeError:  # an httpx error raised outside a request
        return False


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
