"""Activities of discharge sync: the ADT parse, and what a closed run of the same encounter
left on record. Deliveries go through ordered delivery (activities/ordered_delivery.py).

Parsing is pure (a local activity). A discharge exchange completes after a quiet period;
an A08 that comes later starts a new run under the same workflow id, and
``closed_discharge`` finds the latest completed run of that id (Temporal visibility) and
reads its result, so the new run knows the encounter was discharged. Temporal keeps the
record; Careweave adds no store of its own.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.client import Client, WorkflowExecution
from temporalio.exceptions import ApplicationError

from adapters.hl7v2.adt_messages import AdtMessageInvalid, parse_adt_event
from models.discharge import AdtEvent, ClosedDischarge, DischargeSyncSummary
from models.messages import InboundMessage

ADT_MESSAGE_INVALID = "AdtMessageInvalid"


class InterpretAdtInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    message: InboundMessage


@activity.defn
def interpret_adt(request: InterpretAdtInput) -> AdtEvent:
    try:
        return parse_adt_event(request.message.text)
    except AdtMessageInvalid as err:
        raise ApplicationError(str(err), type=ADT_MESSAGE_INVALID, non_retryable=True) from err


class ClosedDischargeRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    workflow_id: str
    # The asking run, never its own answer.
    run_id: str


class DischargeActivities:
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
