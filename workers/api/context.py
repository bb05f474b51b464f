"""The state every route shares, built once by `create_api` and kept in `app.state`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, cast

from fastapi import Depends, Request
from temporalio.client import Client
from temporalio.converter import PayloadCodec

from adapters.review_assignments import ReviewAssignments
from adapters.users import UserDirectory
from models.audit import AuditEntry
from models.settings import Settings
from workers.api.refs import ExchangeRefs
from workers.auth import TokenIssuer, TokenVerifier

if TYPE_CHECKING:
    from workers.api.auth import LoginThrottle

AuditRecorder = Callable[[AuditEntry], Awaitable[object]]  # e.g. AuditLog.aappend


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    temporal_client: Client
    # None means payloads are not encoded: decode returns them as is.
    codec: PayloadCodec | None
    users: UserDirectory
    issuer: TokenIssuer
    verifier: TokenVerifier
    login_throttle: LoginThrottle
    # Exchanges in URLs and pages: opaque references, never workflow ids.
    refs: ExchangeRefs
    # Who took which pending review (the inbox's "Assigned to").
    assignments: ReviewAssignments
    record: AuditRecorder | None = None

    async def audit(self, entry: AuditEntry) -> None:
        if self.record is not None:
            await self.record(entry)


def api_context(request: Request) -> ApiContext:
    return cast(ApiContext, request.app.state.careweave)


# A route parameter of this type receives the app's context.
Context = Annotated[ApiContext, Depends(api_context)]
