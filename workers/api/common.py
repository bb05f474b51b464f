"""What every router answers with: a refusal as a FHIR OperationOutcome, and audit rows."""

from __future__ import annotations

from typing import Any

from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.errors import RequestRefused


class ApiRefusal(RequestRefused):
    """An answer in the 4xx range: HTTP status, FHIR issue code and a sentence for people."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def operation_outcome(code: str, message: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }


def describe_errors(errors: Any) -> str:
    """Which fields were wrong and why, without echoing the values sent."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


def audit_entry(
    actor: str,
    action: AuditAction,
    outcome: AuditOutcome,
    exchange: str | None = None,
    detail: str = "",
    *,
    resource: str | None = None,
) -> AuditEntry:
    """The audit row of one API action by a person (or "anonymous" before a signature
    says who), cut to the columns' lengths."""
    return AuditEntry(
        actor_kind=ActorKind.USER,
        actor=actor[:200] or "anonymous",
        action=action,
        outcome=outcome,
        exchange=exchange[:300] if exchange else None,
        resource=resource,
        detail=detail[:500],
    )
