"""Heartbeats while an activity waits on someone else (a partner's ACK, a server's answer).

An activity that does not heartbeat is only found dead when its start-to-close timeout runs
out: a worker killed while a delivery waited for its ACK would hold that patient's queue for
the whole time limit. Beating while waiting lets Temporal retry it on another worker within
the heartbeat timeout instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity

# Beat this often; the workflow's heartbeat timeout is several times longer (the SDK
# throttles what it sends to the server, so beating often costs nothing).
HEARTBEAT_EVERY_SECONDS = 2.0


@contextlib.asynccontextmanager
async def heartbeating(every: float = HEARTBEAT_EVERY_SECONDS) -> AsyncIterator[None]:
    if activity.info().is_local:
        # A local activity cannot heartbeat: a dead worker's workflow task times out and
        # the next worker runs it again.
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
