"""Exchanges waiting for a person: list them, show one, record a reviewer's decision.

A decision is a Temporal update carrying the reviewer's verified identity; the
workflow's validator refuses a stale or unoffered one before anything enters history.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from models.review import ReviewAction, ReviewDecision, ReviewRecord, ReviewRequest
from workers.api.auth import authorized
from workers.api.common import ApiRefusal, audit_entry, describe_errors
from workers.api.context import Context
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
    review: ReviewRequest


@router.get("/reviews")
async def list_reviews(identity: Viewer, context: Context) -> dict[str, list[PendingReview]]:
    temporal_client = context.temporal_client
    pending: list[PendingReview] = []
    async for execution in temporal_client.list_workflows(
        "ReviewState = 'pending' AND ExecutionStatus = 'Running'"
    ):
        with contextlib.suppress(RPCError):
            raw = await temporal_client.get_workflow_handle(execution.id).query(
                "pending_review", rpc_timeout=TEMPORAL_RPC_TIMEOUT
            )
            if raw:
                review = ReviewRequest.model_validate(raw)
                pending.append(PendingReview(workflow_id=execution.id, review=review))
    await context.audit(
        audit_entry(
            identity.subject,
            AuditAction.ACCESS,
            AuditOutcome.SUCCESS,
            resource="review-list",
            detail=f"{len(pending)} pending",
        )
    )
    return {"reviews": pending}


@router.get("/reviews/{workflow_id:path}")
async def show_review(workflow_id: str, identity: Viewer, context: Context) -> dict[str, Any]:
    try:
        raw = await context.temporal_client.get_workflow_handle(workflow_id).query(
            "pending_review", rpc_timeout=TEMPORAL_RPC_TIMEOUT
        )
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise ApiRefusal(404, "not-found", f"no exchange {workflow_id}") from err
        raise
    await context.audit(
        audit_entry(identity.subject, AuditAction.ACCESS, AuditOutcome.SUCCESS, workflow_id)
    )
    review = ReviewRequest.model_validate(raw) if raw else None
    return {"workflow_id": workflow_id, "review": review}


@router.post("/reviews/{workflow_id:path}/decision")
async def decide(
    workflow_id: str, request: Request, identity: Reviewer, context: Context
) -> ReviewRecord:
    try:
        body = DecisionBody.model_validate_json(await request.body())
    except ValidationError as err:
        raise ApiRefusal(422, "invalid", describe_errors(err.errors())) from err

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
        raw = await handle.query("pending_review", rpc_timeout=TEMPORAL_RPC_TIMEOUT)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise await refuse(404, "not-found", f"no exchange {workflow_id}") from err
        raise
    pending = ReviewRequest.model_validate(raw) if raw else None
    if pending is None:
        raise await refuse(409, "conflict", "no review is pending for this exchange")
    if pending.review_id != body.review_id:
        raise await refuse(
            409,
            "conflict",
            f"review {body.review_id} is not pending (pending: {pending.review_id})",
        )
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
