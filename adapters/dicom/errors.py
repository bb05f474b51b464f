"""Errors from the PACS (DICOMweb, Orthanc's REST API), split by what the caller does next."""

from __future__ import annotations

import httpx

from models.errors import CareweaveError


class PacsError(CareweaveError):
    """Base for every failure talking to the PACS or writing its worklist."""


class PacsUnavailable(PacsError):
    """Transport failure, timeout, 429 or 5xx: the same request may succeed later."""


class PacsRejected(PacsError):
    """The PACS refused the request (4xx other than 429): repeating it cannot succeed."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def raise_for_pacs_status(response: httpx.Response, what: str) -> None:
    """Raise the error family of a failed answer; ``what`` names the request, never a value
    (URLs carry accession numbers in QIDO queries)."""
    status = response.status_code
    if status < 400:
        return
    if status == 429 or status >= 500:
        raise PacsUnavailable(f"the PACS answered {status} to {what}")
    raise PacsRejected(f"the PACS refused {what} ({status})", status_code=status)
