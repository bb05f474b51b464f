"""The MLLP gateway: an asyncio TCP server that frames, hands each message to
the intake (commit, then ACK) and answers on the same connection.

Messages on one connection are handled one at a time, in the order sent, as
MLLP's request/response pattern expects; connections are independent, so a
slow or hostile sender holds up nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from adapters.hl7v2.framing import BadFrame, MllpDecoder, encode_frame
from models.settings import Settings
from workers.intake import MessageIntake

log = logging.getLogger("careweave.gateway")
_READ_SIZE = 65536


class MllpGateway:
    def __init__(
        self,
        intake: MessageIntake,
        settings: Settings,
        *,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._intake = intake
        self._settings = settings
        self._port = settings.mllp_port if port is None else port
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.messages_handled = 0

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self._settings.mllp_host, self._port, ssl=self._ssl
        )
        log.info("MLLP gateway listening on %s:%d", self._settings.mllp_host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "unknown"
        if len(self._connections) >= self._settings.mllp_max_connections:
            log.warning(
                "connection from %s refused: %d connections open", peer, len(self._connections)
            )
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._converse(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _keep_unfinished(self, decoder: MllpDecoder, peer: str) -> None:
        """A frame cut off by a hang-up or an idle timeout is kept; no one is left to answer."""
        for leftover in decoder.close():
            if isinstance(leftover, BadFrame):
                await self._intake.reject_frame(leftover.raw, leftover.reason, peer=peer)

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        decoder = MllpDecoder(self._settings.mllp_max_frame_bytes)
        while True:
            try:
                data = await asyncio.wait_for(
                    reader.read(_READ_SIZE), self._settings.mllp_idle_timeout_seconds
                )
            except TimeoutError:
                log.info("closing idle connection from %s", peer)
                await self._keep_unfinished(decoder, peer)
                return
            if not data:
                await self._keep_unfinished(decoder, peer)
                return
            for item in decoder.feed(data):
                if isinstance(item, BadFrame):
                    result = await self._intake.reject_frame(item.raw, item.reason, peer=peer)
                else:
                    result = await self._intake.accept(item.payload, peer=peer)
                self.messages_handled += 1
                if result.ack is not None:
                    writer.write(encode_frame(result.ack.encode("utf-8")))
                    await writer.drain()
