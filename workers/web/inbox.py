"""The inbox: every pending review across exchanges, oldest first, refreshed in place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from models.review import ReviewRequest
from models.settings import Settings
from workers.api.common import audit_entry
from workers.api.context import ApiContext, Context
from workers.api.reviews import pending_reviews
from workers.web.render import fragment, page
from workers.web.session import signed_in

router = APIRouter()

PageViewer = Annotated[
    Identity, Depends(signed_in(Role.REVIEWER, Role.OPS, action=AuditAction.ACCESS))
]

# From this share of its SLA on, a review shows as due soon.
DUE_SOON_SHARE = 0.75


@dataclass(frozen=True)
class InboxRow:
    ref: str
    exchange: str | None
    review: ReviewRequest
    sla: str  # ok | due | overdue: the CSS class; sla_text says it in words
    sla_text: str
    assigned_to: str | None = None


def sla_state(review: ReviewRequest, settings: Settings, now: datetime) -> tuple[str, str]:
    minutes = settings.review_sla_minutes.get(
        review.reason.value, settings.review_sla_default_minutes
    )
    allowed = timedelta(minutes=minutes)
    waited = now - review.requested_at
    if waited >= allowed:
        return "overdue", f"overdue (SLA {minutes} min)"
    if waited >= allowed * DUE_SOON_SHARE:
        return "due", f"due soon (SLA {minutes} min)"
    return "ok", f"within SLA ({minutes} min)"


@dataclass(frozen=True)
class Inbox:
    rows: list[InboxRow]
    # Exchanges marked pending whose worker did not answer: counted on the page.
    unreadable: int


async def inbox_rows(context: ApiContext) -> Inbox:
    now = datetime.now(UTC)
    rows = []
    pending = await pending_reviews(context)
    assignees = await asyncio.to_thread(
        context.assignments.assignees,
        [(item.workflow_id, item.review.review_id) for item in pending.reviews],
    )
    for item in pending.reviews:
        sla, sla_text = sla_state(item.review, context.settings, now)
        rows.append(
            InboxRow(
                ref=context.refs.ref(item.workflow_id),
                exchange=item.exchange,
                review=item.review,
                sla=sla,
                sla_text=sla_text,
                assigned_to=assignees.get((item.workflow_id, item.review.review_id)),
            )
        )
    return Inbox(rows=rows, unreadable=len(pending.unreadable))


async def _audited_rows(identity: Identity, context: ApiContext) -> Inbox:
    inbox = await inbox_rows(context)
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.ACCESS,
            AuditOutcome.SUCCESS,
            resource="web-inbox",
            detail=f"{len(inbox.rows)} pending, {inbox.unreadable} unreadable",
        )
    )
    return inbox


@router.get("/ui/", response_class=HTMLResponse)
async def inbox_page(request: Request, identity: PageViewer, context: Context) -> HTMLResponse:
    return page(
        request,
        "inbox.html",
        identity,
        title="Pending reviews",
        section="inbox",
        inbox=await _audited_rows(identity, context),
        refresh_seconds=context.settings.web_refresh_seconds,
    )


@router.get("/ui/inbox/rows", response_class=HTMLResponse)
async def inbox_fragment(request: Request, identity: PageViewer, context: Context) -> HTMLResponse:
    return fragment(request, "inbox_rows.html", inbox=await _audited_rows(identity, context))
