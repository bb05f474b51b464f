"""Kept MLLP connections to outbound partners, a few per partner.

A partner usually serves several connections; deliveries for different patients to the
same partner may run side by side, each on its own connection, while one message at a
time travels on any one connection (MLLP has no request ids: the next frame is the ACK).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from adapters.hl7v2.mllp_client import MllpClient

_PartnerKey = tuple[str, int, ssl.SSLContext | None, str | None]


class MllpPool:
    def __init__(self, *, connections_per_partner: int = 4) -> None:
        self._limit = connections_per_partner
        self._idle: dict[_PartnerKey, list[MllpClient]] = {}
        self._slots: dict[_PartnerKey, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def connection(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> AsyncIterator[MllpClient]:
        """A client for one exchange; returned to the pool afterwards (closed ones reconnect).

        ``ssl_context`` (TLS, checking ``server_name``, default ``host``) is part of the key:
        a plain and a TLS link to the same address never share a connection.
        """
        key = (host, port, ssl_context, server_name)
        slots = self._slots.setdefault(key, asyncio.Semaphore(self._limit))
        async with slots:
            idle = self._idle.setdefault(key, [])
            client = (
                idle.pop()
                if idle
                else MllpClient(
                    host, port, timeout=timeout, ssl=ssl_context, server_name=server_name
                )
            )
            try:
                yield client
            finally:
                idle.append(client)

    async def close(self) -> None:
        for clients in self._idle.values():
            for client in clients:
                await client.close()
        self._idle.clear()
