"""Kept MLLP connections to outbound partners, a few per partner.

A partner usually serves several connections; deliveries for different patients to the
same partner may run side by side, each on its own connection, while one message at a
time travels on any one connection (MLLP has no request ids: the next frame is the ACK).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from adapters.hl7v2.mllp_client import MllpClient


class MllpPool:
    def __init__(self, *, connections_per_partner: int = 4) -> None:
        self._limit = connections_per_partner
        self._idle: dict[tuple[str, int], list[MllpClient]] = {}
        self._slots: dict[tuple[str, int], asyncio.Semaphore] = {}

    @asynccontextmanager
    async def connection(
        self, host: str, port: int, *, timeout: float
    ) -> AsyncIterator[MllpClient]:
        """A client for one exchange; returned to the pool afterwards (closed ones reconnect)."""
        key = (host, port)
        slots = self._slots.setdefault(key, asyncio.Semaphore(self._limit))
        async with slots:
            idle = self._idle.setdefault(key, [])
            client = idle.pop() if idle else MllpClient(host, port, timeout=timeout)
            try:
                yield client
            finally:
                idle.append(client)

    async def close(self) -> None:
        for clients in self._idle.values():
            for client in clients:
                await client.close()
        self._idle.clear()
