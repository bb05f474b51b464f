"""Exchanges waiting for a person: list them, show one, record a reviewer's decision.

A decision is a Temporal update carrying the reviewer's verified identity; the
workflow's validator refuses a stale or unoffered one before anything enters history.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import WorkflowUpdateFailedError
from temporalio.common import TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from adapters.hl7v2.correction import check_correction, where
from adapters.hl7v2.header import MessageRejected
from exchanges.sdk import SUPPORTED_VERSIONS
from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from models.review import (
    DeliveryFailureContext,
    ReviewAction,
    ReviewDecision,
    ReviewRecord,
    ReviewRequest,
)
from workers.api.auth import authorized
from workers.api.common import ApiRefusal, audit_entry, describe_errors
from workers.api.context import ApiContext, Context
from workflows import search_attributes as sa
from workflows.review import ReviewableWorkflow

TEMPORAL_RPC_TIMEOUT = timedelta(seconds=30)

router = APIRouter()

# Reviewers and operators may look; only reviewers decide.
Viewer = Annotated[
    Identity, Depends(authorized(Role.REVIEWER, Role.OPS, action=AuditAction.ACCESS))
]
Reviewer = Annotated[
    Identity, Depends(authorized(Role.REVIEWER, action=AuditAction.REVIEW_DECISION))
]


class DecisionBody(BaseModel):
    """What a reviewer sends; who they are comes from their token, never from the body."""

    model_config = ConfigDict(extra="forbid")

    review_id: str = Field(min_length=1, max_length=50)
    action: ReviewAction
    reason: str = Field(min_length=1, max_length=2000)
    edited_message: str | None = None


class PendingReview(BaseModel):
    workflow_id: str
    # The exchange's registered name (its Exchange search attribute), e.g. order-to-result.
    exchange: str | None = None
    review: ReviewRequest


# Queries for the pending review of each listed exchange run this many at a time, and
# each waits this long: an exchange whose worker does not answer must not hold the list.
PENDING_QUERIES_AT_ONCE = 16
PENDING_QUERY_TIMEOUT = timedelta(seconds=5)


class PendingReviews(BaseModel):
    """Pending reviews, oldest first, and the exchanges marked pending whose review could
    not be read (their worker did not answer in time): listed, never silently dropped."""

    reviews: list[PendingReview]
    unreadable: list[str] = Field(default_factory=list)


async def pending_reviews(context: ApiContext) -> PendingReviews:
    """Every running exchange waiting for a person."""
    temporal_client = context.temporal_client
    executions = [
        execution
        async for execution in temporal_client.list_workflows(
            "ReviewState = 'pending' AND ExecutionStatus = 'Running'"
        )
    ]
    slots = asyncio.Semaphore(PENDING_QUERIES_AT_ONCE)
    unreadable: list[str] = []

    async def pending_of(workflow_id: str, exchange: str | None) -> PendingReview | None:
        async with slots:
            try:
                raw = await temporal_client.get_workflow_handle(workflow_id).query(
                    "pending_review", rpc_timeout=PENDING_QUERY_TIMEOUT
                )
            except RPCError as err:
                # NOT_FOUND: it finished between the listing and the query.
                if err.status is not RPCStatusCode.NOT_FOUND:
                    unreadable.append(workflow_id)
                return None
            if not raw:  # decided between the listing and the query
                return None
            review = ReviewRequest.model_validate(raw)
            return PendingReview(workflow_id=workflow_id, exchange=exchange, review=review)

    found = await asyncio.gather(
        *(
            pending_of(execution.id, _exchange_of(execution.typed_search_attributes))
            for execution in executions
        )
    )
    listed = [item for item in found if item is not None]
    return PendingReviews(
        reviews=sorted(listed, key=lambda item: item.review.requested_at),
        unreadable=sorted(unreadable),
    )


def _exchange_of(attributes: TypedSearchAttributes) -> str | None:
    return attributes.get(sa.EXCHANGE)


@router.get("/reviews")
async def list_reviews(identity: Viewer, context: Context) -> PendingReviews:
    pending = await pending_reviews(context)
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.ACCESS,
            AuditOutcome.SUCCESS,
            resource="review-list",
            detail=f"{len(pending.reviews)} pending, {len(pending.unreadable)} unreadable",
        )
    )
    return pending


async def current_review(context: ApiContext, workflow_id: str) -> ReviewRequest | None:
    """The exchange's pending review, None when nothing is pending; 404 for no exchange."""
    try:
        raw = await context.temporal_client.get_workflow_handle(workflow_id).query(
            "pending_review", rpc_timeout=TEMPORAL_RPC_TIMEOUT
        )
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise ApiRefusal(404, "not-found", f"no exchange {workflow_id}") from err
        raise
    return ReviewRequest.model_validate(raw) if raw else None


@router.get("/reviews/{workflow_id:path}")
async def show_review(workflow_id: str, identity: Viewer, context: Context) -> dict[str, Any]:
    review = await current_review(context, workflow_id)
    await context.audit(
        audit_entry(identity.subject, AuditAction.ACCESS, AuditOutcome.SUCCESS, workflow_id)
    )
    return {"workflow_id": workflow_id, "review": review}


@router.post("/reviews/{workflow_id:path}/decision")
async def decide(
    workflow_id: str, request: Request, identity: Reviewer, context: Context
) -> ReviewRecord:
    try:
        body = DecisionBody.model_validate_json(await request.body())
    except ValidationError as err:
        raise ApiRefusal(422, "invalid", describe_errors(err.errors())) from err
    return await record_decision(context, identity, workflow_id, body)


async def record_decision(
    context: ApiContext, identity: Identity, workflow_id: str, body: DecisionBody
) -> ReviewRecord:
    """Send a verified reviewer's decision as the workflow's update; every outcome is an
    audit row. The JSON route and the web inbox's form both come here."""

    async def refuse(status: int, code: str, message: str) -> ApiRefusal:
        await context.audit(
            audit_entry(
                identity.subject,
                AuditAction.REVIEW_DECISION,
                AuditOutcome.REFUSED,
                workflow_id,
                f"{body.action.value} {body.review_id}: {message}",
            )
        )
        return ApiRefusal(status, code, message)

    handle = context.temporal_client.get_workflow_handle(workflow_id)
    try:
        pending = await current_review(context, workflow_id)
    except ApiRefusal as refusal:
        raise await refuse(refusal.status, refusal.code, refusal.message) from refusal
    if pending is None:
        raise await refuse(409, "conflict", "no review is pending for this exchange")
    if pending.review_id != body.review_id:
        raise await refuse(
            409,
            "conflict",
            f"review {body.review_id} is not pending (pending: {pending.review_id})",
        )
    if body.action is ReviewAction.EDIT:
        try:
            body = checked_edit(pending, body)
        except MessageRejected as rejected:
            # The audit row says where the edit failed; the reader's words stay in the answer.
            at = where(rejected)
            refused = await refuse(422, "invalid", f"corrected message refused at {at}")
            refused.message = (
                f"The corrected message was not sent: {where(rejected)}: {rejected.text}. "
                "Correct it and record the decision again."
            )
            raise refused from rejected
    decision = context.issuer.prove_decision(
        ReviewDecision(
            review_id=body.review_id,
            action=body.action,
            reason=body.reason,
            reviewer=identity.subject,
            reviewer_role=Role.REVIEWER.value,
            identity_issuer=identity.issuer,
            edited_message=body.edited_message,
        ),
        workflow_id=workflow_id,
    )
    try:
        result = await handle.execute_update(
            ReviewableWorkflow.decide_review, decision, rpc_timeout=TEMPORAL_RPC_TIMEOUT
        )
    except WorkflowUpdateFailedError as err:
        # The workflow's validator said no (decided meanwhile, action not offered, ...):
        # nothing entered the history.
        raise await refuse(409, "conflict", str(err.cause or err)) from err
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise await refuse(409, "conflict", "the exchange has finished") from err
        raise
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.REVIEW_DECISION,
            AuditOutcome.SUCCESS,
            workflow_id,
            f"{body.action.value} {body.review_id}",
        )
    )
    return ReviewRecord.model_validate(result)


def checked_edit(pending: ReviewRequest, body: DecisionBody) -> DecisionBody:
    """The edit with its message checked against the message that was sent (same type and
    event, readable by the gateway's reader, required segments) and normalised to CR
    separators; raises MessageRejected naming the segment/field when it is not sendable.
    Every edit is checked here, from the web form, the JSON API and the CLI alike."""
    failure = pending.context
    corrected = body.edited_message or ""
    original = failure.sent_message if isinstance(failure, DeliveryFailureContext) else corrected
    decoded = check_correction(corrected, original, supported_versions=SUPPORTED_VERSIONS)
    return body.model_copy(update={"edited_message": decoded.text + "\r"})
