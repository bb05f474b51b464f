"""One pending review: what the reviewer needs to decide, and the decision form.

The decision goes through workers/api/reviews.py record_decision, the same Temporal
update the JSON API sends: the workflow's validator has the last word, and its refusal
(decided meanwhile by someone else, action not offered) is shown on the page.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from models.review import ReviewAction, ReviewRecord, ReviewRequest
from workers.api.common import ApiRefusal, audit_entry, describe_errors
from workers.api.context import ApiContext, Context
from workers.api.refs import UnknownReference
from workers.api.reviews import TEMPORAL_RPC_TIMEOUT, DecisionBody, current_review, record_decision
from workers.web.render import page
from workers.web.review_kinds import DeliveryFailureView, kind_view
from workers.web.session import check_form_origin, signed_in

router = APIRouter()

PageViewer = Annotated[
    Identity, Depends(signed_in(Role.REVIEWER, Role.OPS, action=AuditAction.ACCESS))
]
PageReviewer = Annotated[
    Identity, Depends(signed_in(Role.REVIEWER, action=AuditAction.REVIEW_DECISION))
]


async def _exchange(context: ApiContext, ref: str) -> str:
    try:
        return context.refs.workflow_id(ref)
    except UnknownReference as err:
        raise ApiRefusal(404, "not-found", "no such exchange (the link is wrong or old)") from err


async def _last_decision(context: ApiContext, workflow_id: str) -> ReviewRecord | None:
    handle = context.temporal_client.get_workflow_handle(workflow_id)
    records = await handle.query("review_history", rpc_timeout=TEMPORAL_RPC_TIMEOUT)
    return ReviewRecord.model_validate(records[-1]) if records else None


@dataclass(frozen=True)
class _FormAgain:
    chosen_action: str = ""
    reason: str = ""
    edited_message: str | None = None


async def _review_page(
    request: Request,
    identity: Identity,
    context: ApiContext,
    ref: str,
    *,
    notice: str = "",
    error: str = "",
    status_code: int = 200,
    again: _FormAgain | None = None,
) -> HTMLResponse:
    again = again or _FormAgain()
    edited_message = again.edited_message
    workflow_id = await _exchange(context, ref)
    review: ReviewRequest | None = await current_review(context, workflow_id)
    last = await _last_decision(context, workflow_id)
    view = await kind_view(context, workflow_id, review) if review else None
    assignee = await _assignee(context, workflow_id, review)
    if edited_message is None and isinstance(view, DeliveryFailureView) and view.editable:
        edited_message = view.failure.sent_message
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.ACCESS,
            AuditOutcome.SUCCESS,
            workflow_id,
            f"web review page ({review.review_id if review else 'none pending'})",
        )
    )
    return page(
        request,
        "review.html",
        identity,
        title="Review" if review else "Review decided",
        ref=ref,
        review=review,
        view=view,
        assignee=assignee,
        last=last,
        notice=notice,
        error=error,
        may_decide=identity.has_any(Role.REVIEWER),
        chosen_action=again.chosen_action,
        edited_message=edited_message or "",
        reason=again.reason,
        status_code=status_code,
    )


async def _assignee(
    context: ApiContext, workflow_id: str, review: ReviewRequest | None
) -> str | None:
    if review is None:
        return None
    key = (workflow_id, review.review_id)
    return (await asyncio.to_thread(context.assignments.assignees, [key])).get(key)


@router.get("/ui/reviews/{ref}", response_class=HTMLResponse)
async def review_page(
    ref: str,
    request: Request,
    identity: PageViewer,
    context: Context,
    decided: str = "",
    assigned: bool = False,
) -> HTMLResponse:
    notice = f"Your decision ({decided}) was recorded." if decided in set(ReviewAction) else ""
    if assigned:
        notice = "The review is assigned to you."
    return await _review_page(request, identity, context, ref, notice=notice)


@router.post("/ui/reviews/{ref}/decision")
async def decide_from_page(
    ref: str, request: Request, identity: PageReviewer, context: Context
) -> Response:
    form = await request.form()
    await check_form_origin(request, context, identity, form.get("csrf_token"))
    workflow_id = await _exchange(context, ref)
    action, reason, edited = form.get("action"), form.get("reason"), form.get("edited_message")
    editing = action == ReviewAction.EDIT.value and isinstance(edited, str)
    fields = {
        "review_id": form.get("review_id"),
        "action": action,
        "reason": reason,
        # The editor is on the page for every action; only an edit sends what it holds.
        "edited_message": edited if editing else None,
    }
    # A refused form comes back as the reviewer filled it in.
    again = _FormAgain(
        chosen_action=action if isinstance(action, str) else "",
        reason=reason if isinstance(reason, str) else "",
        edited_message=edited if isinstance(edited, str) else None,
    )
    try:
        body = DecisionBody.model_validate(fields)
    except ValidationError as err:
        message = "The decision is incomplete: " + describe_errors(err.errors())
        return await _review_page(
            request, identity, context, ref, error=message, status_code=422, again=again
        )
    try:
        await record_decision(context, identity, workflow_id, body)
    except ApiRefusal as refusal:
        message = refusal.message
        if refusal.status == 409:
            last = await _last_decision(context, workflow_id)
            if last is not None and last.decision.review_id == body.review_id:
                message = (
                    f"This review was already decided by {last.decision.reviewer} "
                    f"({last.decision.action.value}): {last.decision.reason}"
                )
        return await _review_page(
            request, identity, context, ref, error=message, status_code=refusal.status, again=again
        )
    # Post/redirect/get: a reload shows the outcome instead of posting the decision again.
    return RedirectResponse(f"/ui/reviews/{ref}?decided={body.action.value}", status_code=303)


@router.post("/ui/reviews/{ref}/assignment")
async def assign_to_me(
    ref: str, request: Request, identity: PageReviewer, context: Context
) -> Response:
    """ "Assign to me": the reviewer takes the pending review (an audit row and an
    append-only assignment row; the inbox shows who has it)."""
    form = await request.form()
    await check_form_origin(
        request, context, identity, form.get("csrf_token"), action=AuditAction.REVIEW_ASSIGNMENT
    )
    workflow_id = await _exchange(context, ref)
    review_id = form.get("review_id")
    pending = await current_review(context, workflow_id)
    if pending is None or pending.review_id != review_id:
        await context.audit(
            audit_entry(
                identity.subject,
                AuditAction.REVIEW_ASSIGNMENT,
                AuditOutcome.REFUSED,
                workflow_id,
                f"{review_id} is not pending",
            )
        )
        return await _review_page(
            request,
            identity,
            context,
            ref,
            error="That review is no longer pending: it was decided meanwhile.",
            status_code=409,
        )
    await asyncio.to_thread(
        context.assignments.assign, workflow_id, pending.review_id, identity.subject
    )
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.REVIEW_ASSIGNMENT,
            AuditOutcome.SUCCESS,
            workflow_id,
            f"{pending.review_id} assigned to {identity.subject}",
        )
    )
    return RedirectResponse(f"/ui/reviews/{ref}?assigned=true", status_code=303)
