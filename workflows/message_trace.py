"""Continue each message's trace inside the long-lived exchange workflow.

An exchange lives for many messages, but Temporal's tracing interceptor parents every
activity on the trace of whichever message *started* the workflow. Each message carries
its own W3C trace context (random ids, no PHI) from the gateway's receive span; handling
the message under that context makes its activities and FHIR writes one trace with it.
"""

from __future__ import annotations

from collections.abc import Mapping

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from opentelemetry import context as otel_context
    from opentelemetry import propagate

TraceBase = otel_context.Context


def trace_base() -> TraceBase:
    """The workflow's own context (it holds the tracing interceptor); call once in run()."""
    return otel_context.get_current()


def follow_message_trace(carrier: Mapping[str, str], base: TraceBase) -> None:
    """Make the message's trace current for what the workflow does next.

    Attached without a matching detach on purpose: the context belongs to the workflow's
    run task and is replaced for every message, while a detach in a ``finally`` would run
    in a foreign context when the worker evicts the workflow mid-await.
    """
    otel_context.attach(propagate.extract(dict(carrier), context=base) if carrier else base)
