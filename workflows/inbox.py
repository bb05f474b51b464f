"""The inbox of an entity workflow (one encounter, one patient): messages handled one at a
time in arrival order, each sender + MSH-10 once, the exchange closing after a quiet period."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow

from workflows import search_attributes as sa
from workflows.exchange_search import (
    add_business_keys,
    coalesced_upserts,
    message_attributes,
    upsert_changed,
)
from workflows.message_trace import follow_message_trace, trace_base
from workflows.patches import Patched

with workflow.unsafe.imports_passed_through():
    from models.messages import InboundMessage


class MessageInbox:
    def __init__(self) -> None:
        self._queue: deque[InboundMessage] = deque()
        self._seen: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def accept(self, message: InboundMessage) -> None:
        """Queue a message from a signal; a resend (same MSH-4 + MSH-10) that slipped past the
        gateway's receipt table is dropped."""
        if message.dedup_key in self._seen:
            return
        self._seen.add(message.dedup_key)
        self._queue.append(message)

    async def next_or_quiet(self, quiet_seconds: float) -> InboundMessage | None:
        """The next message, waiting up to ``quiet_seconds`` for one; None when none came and
        no signal handler still running queued one (the exchange then completes).

        wait_condition raises TimeoutError on its timeout; it returns nothing.
        """
        if not self._queue:
            try:
                await workflow.wait_condition(
                    lambda: bool(self._queue), timeout=timedelta(seconds=quiet_seconds)
                )
            except TimeoutError:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._queue:
                    return None
        return self._queue.popleft()

    async def serve(
        self,
        quiet_seconds: float,
        handle: Callable[[InboundMessage], Awaitable[None]],
        idle_details: Callable[[], str],
        patched: Patched = workflow.patched,
    ) -> None:
        """Handle every message in arrival order until ``quiet_seconds`` pass without one:
        each under its sender's trace, with its type and business keys on the exchange's
        search attributes; ``idle_details`` is what the Temporal UI shows while waiting."""
        own_trace = trace_base()
        while True:
            follow_message_trace({}, own_trace)
            if not self._queue:
                workflow.set_current_details(idle_details())
            message = await self.next_or_quiet(quiet_seconds)
            if message is None:
                return
            follow_message_trace(message.trace_context, own_trace)
            if coalesced_upserts(patched):
                upsert_changed(message_attributes(message.message_type, message.business_keys))
            else:
                workflow.upsert_search_attributes([sa.MESSAGE_TYPE.value_set(message.message_type)])
                add_business_keys(message.business_keys, patched)
            await handle(message)
