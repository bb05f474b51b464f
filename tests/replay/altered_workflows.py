"""A deliberately broken variant of a workflow, under the same workflow type name, for the test
that proves the replay test fails on an incompatible change (test_replay_catches_changes.py).

It lives in a module of its own because the sandbox re-imports a workflow's module by name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio import workflow

from workflows.order_to_result import OrderToResult, OrderToResultSummary

with workflow.unsafe.imports_passed_through():
    from activities.order_to_result import FhirActivities, PublishOutcome, publish_service_request
    from models.exchanges import OrderToResultInput

_A = TypeVar("_A")


@workflow.defn(name="OrderToResult")
class OrderToResultWithoutServiceRequest(OrderToResult):
    """Today's OrderToResult with one activity call removed: the order's ServiceRequest is no
    longer written (the workflow goes on as if it had been)."""

    @workflow.run
    async def run(self, params: OrderToResultInput) -> OrderToResultSummary:
        return await super().run(params)

    async def _publish(
        self,
        activity: Callable[[FhirActivities, _A], Awaitable[PublishOutcome]],
        arg: _A,
        *,
        summary: str,
    ) -> PublishOutcome | None:
        if activity is publish_service_request:
            return PublishOutcome(resources=[])
        return await super()._publish(activity, arg, summary=summary)
