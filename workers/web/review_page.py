"""One pending review: what the reviewer needs to decide, and the decision form.

The decision goes through workers/api/reviews.py record_decision, the same Temporal
update the JSON API sends: the workflow's validator has the last word, and its refusal
(decided meanwhile by someone else, action not offered) is shown on the page.
"""

from __future__ import annotations

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


async def _review_page(
    request: Request,
    identity: Identity,
    context: ApiContext,
    ref: str,
    *,
    notice: str = "",
    error: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    workflow_id = await _exchange(context, ref)
    review: ReviewRequest | None = await current_review(context, workflow_id)
    last = await _last_decision(context, workflow_id)
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
        last=last,
        notice=notice,
        error=error,
        may_decide=identity.has_any(Role.REVIEWER),
        status_code=status_code,
    )


@router.get("/ui/reviews/{ref}", response_class=HTMLResponse)
async def review_page(
    ref: str, request: Request, identity: PageViewer, context: Context, decided: str = ""
) -> HTMLResponse:
    notice = f"Your decision ({decided}) was recorded." if decided in set(ReviewAction) else ""
    return await _review_page(request, identity, context, ref, notice=notice)


@router.post("/ui/reviews/{ref}/decision")
async def decide_from_page(
    ref: str, request: Request, identity: PageReviewer, context: Context
) -> Response:
    form = await request.form()
    await check_form_origin(request, context, identity, form.get("csrf_token"))
    workflow_id = await _exchange(context, ref)
    edited = form.get("edited_message")
    fields = {
        "review_id": form.get("review_id"),
        "action": form.get("action"),
        "reason": form.get("reason"),
        "edited_message": edited if isinstance(edited, str) and edited.strip() else None,
    }
    try:
        body = DecisionBody.model_validate(fields)
    except ValidationError as err:
        message = "The decision is incomplete: " + describe_errors(err.errors())
        return await _review_page(request, identity, context, ref, error=message, status_code=422)
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
            request, identity, context, ref, error=message, status_code=refusal.status
        )
    # Post/redirect/get: a reload shows the outcome instead of posting the decision again.
    return RedirectResponse(f"/ui/reviews/{ref}?decided={body.action.value}", status_code=303)
