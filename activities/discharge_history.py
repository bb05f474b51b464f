"""What a closed discharge exchange left on record, for a later exchange of the same encounter.

A discharge exchange completes after a quiet period; an A08 that comes later starts a new
run under the same workflow id. This activity finds the latest completed run of that id
(Temporal visibility) and reads its result, so the new run knows the encounter was
discharged. Temporal keeps the record; Careweave adds no store of its own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.client import Client, WorkflowExecution

from models.discharge import ClosedDischarge, DischargeSyncSummary


class ClosedDischargeRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    workflow_id: str
    # The asking run, never its own answer.
    run_id: str


class DischargeHistoryActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="closed_discharge")
    async def closed_discharge(self, request: ClosedDischargeRequest) -> ClosedDischarge | None:
        """The discharge on record at the close of the latest completed run, or None
        (no earlier run, or it ended without a discharge: never discharged, or cancelled)."""
        quoted = request.workflow_id.replace("\\", "\\\\").replace("'", "\\'")
        closed: list[WorkflowExecution] = [
            execution
            async for execution in self._client.list_workflows(
                f"WorkflowId = '{quoted}' AND ExecutionStatus = 'Completed'"
            )
            if execution.run_id != request.run_id and execution.close_time is not None
        ]
        if not closed:
            return None
        latest = max(closed, key=lambda execution: execution.close_time or 0)
        summary = await self._client.get_workflow_handle(
            request.workflow_id, run_id=latest.run_id, result_type=DischargeSyncSummary
        ).result(follow_runs=False)
        if summary.discharge is None:
            return None
        return ClosedDischarge(
            run_id=latest.run_id or "",
            discharge=summary.discharge,
            diagnoses=tuple(summary.diagnoses),
        )
