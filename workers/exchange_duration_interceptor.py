"""How long exchanges take: a histogram of each run's duration, recorded when it closes.

Recorded through the workflow's own metric meter (``workflow.metric_meter()``), which emits
nothing while a history is replayed, so a run that a worker picks up again after a restart
is counted once, when it really closes. The Temporal SDK serves it with its own metrics
(CAREWEAVE_TEMPORAL_METRICS_PORT) as ``careweave_exchange_duration_seconds``, beside the
``namespace``, ``task_queue`` and ``workflow_type`` labels the SDK adds.

The duration is workflow time (``workflow.now()``) since the run started: for a run that
continued as new (a delivery queue), its last run only. ``exchange`` is the run's Exchange
search attribute (a registry name set by Careweave's code, never message data), else its
workflow type; ``outcome`` is ``completed`` or ``failed``. Cancelled and continued-as-new
runs are not counted.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import FailureError
from temporalio.worker import (
    ExecuteWorkflowInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from workflows import search_attributes as sa

EXCHANGE_DURATION_METRIC = "careweave_exchange_duration_seconds"
# Exchanges last from under a second (a delivery) to a week (a discharge's quiet period,
# an order waiting for its result): buckets from 1 s to 2 weeks.
EXCHANGE_DURATION_BUCKETS = (
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0,
    86400.0, 2 * 86400.0, 4 * 86400.0, 7 * 86400.0, 14 * 86400.0,
)  # fmt: skip


def _record_duration(outcome: str) -> None:
    info = workflow.info()
    exchange = info.typed_search_attributes.get(sa.EXCHANGE) or info.workflow_type
    seconds = max(0.0, (workflow.now() - info.workflow_start_time).total_seconds())
    histogram = workflow.metric_meter().create_histogram_float(
        EXCHANGE_DURATION_METRIC,
        "Duration of closed exchange runs, from their start to their close",
        "s",
    )
    histogram.record(seconds, {"exchange": exchange, "outcome": outcome})


class _ExchangeDurationInbound(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        try:
            result = await super().execute_workflow(input)
        except FailureError:
            # An ApplicationError (or another failure) escaping run() fails the workflow.
            _record_duration("failed")
            raise
        _record_duration("completed")
        return result


class ExchangeDurationInterceptor(Interceptor):
    """Registered on the worker (open_worker): every workflow it runs is timed."""

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _ExchangeDurationInbound
