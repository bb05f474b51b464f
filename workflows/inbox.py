"""The inbox of an entity workflow (one encounter, one patient): messages handled one at a
time in arrival order, the exchange closing after a quiet period."""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow

Message = TypeVar("Message")


async def next_or_quiet(inbox: deque[Message], quiet_seconds: float) -> Message | None:
    """The inbox's next message, waiting up to ``quiet_seconds`` for one; None when none came
    and no signal handler still running queued one (the exchange then completes).

    wait_condition raises TimeoutError on its timeout; it returns nothing.
    """
    if not inbox:
        try:
            await workflow.wait_condition(
                lambda: bool(inbox), timeout=timedelta(seconds=quiet_seconds)
            )
        except TimeoutError:
            await workflow.wait_condition(workflow.all_handlers_finished)
            if not inbox:
                return None
    return inbox.popleft()
