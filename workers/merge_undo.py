"""Undoing one merge of a patient-merge exchange: what `careweave merge undo` and the review
API's ``POST /exchanges/{id}/merges/undo`` both call.

Reads the merge's outcome from the exchange (its Provenances and identity index event: no
PHI) and, when the merge was announced downstream, the merge as announced (an encrypted
payload, for the undo's A37), starts the patient-unmerge workflow for it and waits for its
summary. Undoing the same merge twice runs once: the second asker gets the first's summary.
"""

from __future__ import annotations

import hashlib

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from models.errors import RequestRefused
from models.merge import MergeOutcome, UnmergeInput, UnmergeSummary
from workflows import search_attributes as sa
from workflows.patient_merge import PatientMergeExchange
from workflows.patient_unmerge import PatientUnmerge, unmerge_workflow_id


class UndoRefused(RequestRefused):
    """The merge cannot be undone as asked (the text says why; no PHI)."""


class MergeExchangeNotFound(UndoRefused):
    """No patient-merge exchange runs or ran under the id given."""


async def undo_merge(
    client: Client,
    exchange: str,
    *,
    reason: str,
    actor: str,
    task_queue: str,
    control_id: str | None = None,
    merge_index: int | None = None,
) -> UnmergeSummary:
    """Undo one merged outcome of ``exchange`` (the last one unless named) and wait."""
    handle = client.get_workflow_handle_for(PatientMergeExchange.run, exchange)
    try:
        outcomes: list[MergeOutcome] = await handle.query(PatientMergeExchange.merge_outcomes)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise MergeExchangeNotFound(f"no exchange {exchange}") from err
        raise UndoRefused(f"cannot read {exchange}: {err}") from err
    merged = [
        o
        for o in outcomes
        if o.outcome in ("merged", "recorded")
        and (control_id is None or o.control_id == control_id)
        and (merge_index is None or o.merge_index == merge_index)
    ]
    if not merged:
        raise UndoRefused(f"{exchange} has no merge to undo that matches")
    chosen = merged[-1]
    message_key = hashlib.sha256(chosen.control_id.encode()).hexdigest()[:16]
    workflow_id = unmerge_workflow_id(exchange, message_key, chosen.merge_index)
    try:
        # The merge as announced downstream (an encrypted payload), so the undo's A37 goes
        # where the A40 went; None for a merge that was not announced.
        announced = await handle.query(
            PatientMergeExchange.announced_merge, args=[chosen.control_id, chosen.merge_index]
        )
    except RPCError as err:
        raise UndoRefused(f"cannot read {exchange}: {err}") from err
    try:
        return await client.execute_workflow(
            PatientUnmerge.run,
            UnmergeInput(
                merge_exchange=exchange,
                merge=chosen,
                actor=actor,
                reason=reason,
                mapping_version=chosen.mapping_version,
                announced=announced,
            ),
            id=workflow_id,
            task_queue=task_queue,
            # Undoing the same merge twice runs once: the second asks finds the first.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(sa.EXCHANGE, "patient-merge")]
            ),
            static_summary="Undo of one patient merge",
        )
    except WorkflowAlreadyStartedError:
        return await client.get_workflow_handle_for(PatientUnmerge.run, workflow_id).result()
