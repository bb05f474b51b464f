"""Undoing a patient merge through the review API: ``POST /exchanges/{id}/merges/undo``.

A reviewer who finds that a merge joined two people undoes it here as an operator does with
`careweave merge undo` (workers/merge_undo.py): both records, their links and every
re-pointed reference are restored from the merge's Provenances, the destinations are sent
the unlink, and the merge stays in every history beside its undo. Who undid it comes from
the token, never from the body; the reason is kept in the unmerge's history and the audit
trail names the exchange (no PHI: the reason is the reviewer's own words, like a decision's).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.audit import AuditAction, AuditOutcome
from models.identity import Identity, Role
from models.merge import UnmergeSummary
from workers.api.auth import authorized
from workers.api.common import ApiRefusal, audit_entry, describe_errors
from workers.api.context import ApiContext, Context
from workers.merge_undo import MergeExchangeNotFound, UndoRefused, undo_merge

router = APIRouter()

Reviewer = Annotated[Identity, Depends(authorized(Role.REVIEWER, action=AuditAction.MERGE_UNDO))]


class UndoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)
    # Which merge of the exchange: the merge message's MSH-10 and its MRG's place; the last
    # merge of the exchange when left out.
    control_id: str | None = Field(default=None, min_length=1, max_length=199)
    merge_index: int | None = Field(default=None, ge=0)


@router.post("/exchanges/{workflow_id:path}/merges/undo")
async def undo(
    workflow_id: str, request: Request, identity: Reviewer, context: Context
) -> UnmergeSummary:
    try:
        body = UndoBody.model_validate_json(await request.body())
    except ValidationError as err:
        raise ApiRefusal(422, "invalid", describe_errors(err.errors())) from err
    if not body.reason.strip():
        raise ApiRefusal(422, "invalid", "reason: must say why the merge is undone")
    return await undo_as(context, identity, workflow_id, body)


async def undo_as(
    context: ApiContext, identity: Identity, workflow_id: str, body: UndoBody
) -> UnmergeSummary:
    """Undo and wait for the summary; every outcome is an audit row."""

    async def audited(outcome: AuditOutcome, detail: str) -> None:
        await context.audit(
            audit_entry(identity.subject, AuditAction.MERGE_UNDO, outcome, workflow_id, detail)
        )

    if not workflow_id.startswith("patient-merge/"):
        await audited(AuditOutcome.REFUSED, "not a patient-merge exchange")
        raise ApiRefusal(404, "not-found", "not a patient-merge exchange")
    try:
        summary = await undo_merge(
            context.temporal_client,
            workflow_id,
            reason=body.reason.strip(),
            actor=identity.subject,
            task_queue=context.settings.task_queue,
            control_id=body.control_id,
            merge_index=body.merge_index,
        )
    except MergeExchangeNotFound as err:
        await audited(AuditOutcome.REFUSED, "no such exchange")
        raise ApiRefusal(404, "not-found", "no such exchange") from err
    except UndoRefused as err:
        await audited(AuditOutcome.REFUSED, str(err))
        raise ApiRefusal(409, "conflict", str(err)) from err
    await audited(AuditOutcome.SUCCESS, "merge undone")
    return summary
