"""Pages from Jinja2 templates (autoescaped): every page knows who is signed in and
carries the session's CSRF token for its forms."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from models.identity import Identity
from models.lab import PatientRef
from models.review import ReviewReason
from workers.web.session import CSRF_FIELD, csrf_token

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

# What each kind of review is called on the pages.
REVIEW_KINDS: dict[ReviewReason, str] = {
    ReviewReason.UNMAPPED_CODE: "Unmapped local code",
    ReviewReason.UNKNOWN_ORDER: "Result without an order",
    ReviewReason.FHIR_REJECTED: "FHIR server refused a write",
    ReviewReason.INVALID_MESSAGE: "Message failed validation",
    ReviewReason.DELIVERY_FAILED: "Failed delivery",
    ReviewReason.UPDATE_AFTER_CLOSE: "Update after the encounter closed",
    ReviewReason.PATIENT_MISMATCH: "Result for another patient than its order",
}


def waited(since: datetime, now: datetime | None = None) -> str:
    """How long ago, in the unit a person reads at a glance."""
    seconds = max(int(((now or datetime.now(UTC)) - since).total_seconds()), 0)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{seconds // 60} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def patient_words(patient: PatientRef) -> str:
    """The patient as the message names them: for a signed-in reviewer's page body only,
    never a title or a URL."""
    name = ", ".join(part for part in (patient.family_name, patient.given_name) if part)
    born = f"born {patient.birth_date.isoformat()}" if patient.birth_date else ""
    parts = [name, f"{patient.identifier_type or 'id'} {patient.identifier}", born, patient.sex]
    return " · ".join(part for part in parts if part)


def message_lines(text: str | None) -> str:
    """An HL7 v2 message with one segment per line (segments end in CR, which browsers
    would not break lines on in <pre>, and would turn into LF in a <textarea> anyway)."""
    return (text or "").replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


templates.env.globals["review_kind"] = lambda reason: REVIEW_KINDS.get(reason, str(reason))
templates.env.globals["patient_words"] = patient_words
templates.env.filters["waited"] = waited
templates.env.filters["message_lines"] = message_lines


def page(
    request: Request,
    template: str,
    identity: Identity,
    *,
    title: str,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    """A full page. `title` names the page's job, never a patient or an order."""
    return templates.TemplateResponse(
        request,
        template,
        {
            "title": title,
            "user": identity.subject,
            "roles": sorted(role.value for role in identity.roles),
            "csrf_field": CSRF_FIELD,
            "csrf_token": csrf_token(request),
            **values,
        },
        status_code=status_code,
    )


def fragment(request: Request, template: str, **values: Any) -> HTMLResponse:
    """A part of a page, fetched again by the page's script to refresh it in place."""
    return templates.TemplateResponse(request, template, values)
