"""Review decisions count only with the API's proof: checked in the update's validation
stage, on the worker, before the update enters the history.

A decision sent straight to the Temporal frontend (a made-up reviewer, no token) carries no
valid proof and is rejected here: the caller gets the reason, the history gets nothing, and
the audit trail gets a row. Validators do not run when a history is replayed, so the
decisions already recorded (before proofs existed, or under an older key) replay as they
are. The check is pure computation with keys loaded outside the workflow (per worker, no
process-wide state); the audit row is handed to the worker's event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    HandleUpdateInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from adapters.decision_proof import DecisionProofKeys, DecisionProofRefused
from models.review import ReviewDecision

DECISION_PROOF_REFUSED = "DecisionProofRefused"

# (workflow id, decision, why) -> None; called on a workflow thread, must not block.
RefusalRecorder = Callable[[str, ReviewDecision, str], None]


@dataclass(frozen=True)
class _WorkerChecks:
    keys: DecisionProofKeys
    record_refusal: RefusalRecorder


class _DecisionProofCheck(WorkflowInboundInterceptor):
    # Set on the per-worker subclass made by DecisionProofInterceptor.
    checks: ClassVar[_WorkerChecks]

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        for arg in input.args:
            decision = _as_decision(arg)
            if decision is not None:
                self._check(decision)
        super().handle_update_validator(input)

    def _check(self, decision: ReviewDecision) -> None:
        workflow_id = workflow.info().workflow_id
        try:
            # The keys and the crypto libraries live outside the sandbox; their lazy imports
            # must reach the real modules, not the sandbox's fresh copies.
            with workflow.unsafe.sandbox_unrestricted(), workflow.unsafe.imports_passed_through():
                self.checks.keys.verify(decision, workflow_id=workflow_id)
        except DecisionProofRefused as refusal:
            why = str(refusal)
            self.checks.record_refusal(workflow_id, decision, why)
            raise ApplicationError(
                f"decision refused: {why}; decide through Careweave's API "
                "(`careweave review approve|reject|...` or its HTTP route)",
                type=DECISION_PROOF_REFUSED,
                non_retryable=True,
            ) from None


def _as_decision(arg: object) -> ReviewDecision | None:
    """``arg`` as a ReviewDecision of this module's world, if it is one. The sandbox imports
    models/ again for each workflow, so the update's argument is an instance of the
    sandbox's ReviewDecision class, not of the one imported here: matched by name."""
    kind = type(arg)
    if (kind.__module__, kind.__qualname__) != (
        ReviewDecision.__module__,
        ReviewDecision.__qualname__,
    ):
        return None
    return ReviewDecision.model_validate(arg, from_attributes=True)


class DecisionProofInterceptor(Interceptor):
    """Registered on the worker (open_worker) with the public keys it trusts and the
    function that audits a refusal (RefusalAudit.decision_refused)."""

    def __init__(self, keys: DecisionProofKeys, record_refusal: RefusalRecorder) -> None:
        self._checks = _WorkerChecks(keys, record_refusal)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        # The SDK instantiates the class in each workflow's sandbox; a subclass per worker
        # carries this worker's keys to it.
        return type("DecisionProofCheck", (_DecisionProofCheck,), {"checks": self._checks})
