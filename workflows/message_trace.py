"""Continue each message's trace inside the long-lived exchange workflow.

An exchange lives for many messages, but Temporal's tracing interceptor parents every
activity on the trace of whichever message *started* the workflow. Each message carries
its own W3C trace context (random ids, no PHI) from the gateway's receive span; handling
the message under that context makes its activities and FHIR writes one trace with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from opentelemetry import context as otel_context
    from opentelemetry import propagate


@contextmanager
def continued_trace(carrier: Mapping[str, str]) -> Iterator[None]:
    if not carrier:
        yield
        return
    # Extract on top of the current context: the tracing interceptor keeps itself there.
    context = propagate.extract(dict(carrier), context=otel_context.get_current())
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
