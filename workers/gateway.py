"""The MLLP gateway: an asyncio TCP server that frames, hands each message to
the intake (commit, then ACK) and answers on the same connection.

Messages on one connection are handled one at a time, in the order sent, as
MLLP's request/response pattern expects; connections are independent, so a
slow or hostile sender holds up nobody else. What one sender can take is bounded:
a connection slot (max connections), one frame's bytes (max frame size), and time
(TLS handshake timeout, idle timeout, and a deadline for a started frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING

from adapters.hl7v2.framing import BadFrame, Frame, MllpDecoder, encode_frame
from adapters.tls import TlsConfigError, server_tls_context
from models.settings import Settings
from workers.intake import MessageIntake

if TYPE_CHECKING:
    from workers.metrics import GatewayMetrics

log = logging.getLogger("careweave.gateway")
_READ_SIZE = 65536


def gateway_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The gateway's TLS context from its settings; None when TLS is off.

    Raises ``TlsConfigError`` naming the setting or the file that cannot be used.
    """
    cert, key, client_ca = (
        settings.mllp_tls_cert_file,
        settings.mllp_tls_key_file,
        settings.mllp_tls_client_ca_file,
    )
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsConfigError(
                "CAREWEAVE_MLLP_TLS_CLIENT_CA_FILE is set but TLS is off: set "
                "CAREWEAVE_MLLP_TLS_CERT_FILE and CAREWEAVE_MLLP_TLS_KEY_FILE too"
            )
        return None
    if cert is None or key is None:
        missing = "CERT" if cert is None else "KEY"
        raise TlsConfigError(
            f"CAREWEAVE_MLLP_TLS_{missing}_FILE is not set: TLS needs both the "
            "certificate file and the key file"
        )
    return server_tls_context(cert, key, client_ca_file=client_ca)


def _handshake_failure(error: BaseException) -> str:
    """Why a handshake failed, in OpenSSL's words (never bytes the client sent)."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    if isinstance(error, TimeoutError):
        return "not completed in time"
    # asyncio's own texts, e.g. "SSL handshake is taking longer than 10.0 seconds".
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class _TlsPendingProtocol(asyncio.StreamReaderProtocol):
    """Reads nothing until TLS starts: a ClientHello read before the handler calls
    start_tls would land in the plain stream and the handshake would never finish."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        super().connection_made(transport)


class MllpGateway:
    """Raises ``TlsConfigError`` at construction when the TLS settings cannot be used."""

    def __init__(
        self,
        intake: MessageIntake,
        settings: Settings,
        *,
        port: int | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._intake = intake
        self._metrics = metrics
        self._settings = settings
        self._port = settings.mllp_port if port is None else port
        self._ssl = gateway_tls_context(settings)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.messages_handled = 0

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        # TLS is started per connection (not by start_server) so that a connection still in
        # its handshake holds a counted slot and its failure is logged here.
        loop = asyncio.get_running_loop()
        protocol = _TlsPendingProtocol if self._ssl is not None else asyncio.StreamReaderProtocol
        self._server = await loop.create_server(
            lambda: protocol(asyncio.StreamReader(), self._serve_connection),
            self._settings.mllp_host,
            self._port,
        )
        log.info(
            "MLLP gateway listening on %s:%d%s",
            self._settings.mllp_host,
            self.port,
            " (TLS)" if self._ssl is not None else "",
        )

    @property
    def tls(self) -> bool:
        return self._ssl is not None

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
            if self._ssl is not None and not await self._handshake(writer, peer):
                return
            await self._converse(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handshake(self, writer: asyncio.StreamWriter, peer: str) -> bool:
        """Start TLS on an accepted connection; a plain-TCP client or a refused certificate
        ends here, with the reason logged and nothing the client sent."""
        assert self._ssl is not None
        timeout = self._settings.mllp_tls_handshake_timeout_seconds
        try:
            # ssl_handshake_timeout alone leaves a silent client waiting on asyncio's own
            # abort; the outer timeout makes the limit exact.
            await asyncio.wait_for(
                writer.start_tls(self._ssl, ssl_handshake_timeout=timeout), timeout + 1
            )
        except (OSError, TimeoutError, EOFError) as error:
            log.warning("TLS handshake with %s failed: %s", peer, _handshake_failure(error))
            return False
        return True

    async def _keep_unfinished(self, decoder: MllpDecoder, peer: str) -> None:
        """A frame cut off by a hang-up or an idle timeout is kept; no one is left to answer."""
        for leftover in decoder.close():
            if isinstance(leftover, BadFrame):
                await self._intake.reject_frame(leftover.raw, leftover.reason, peer=peer)

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        decoder = MllpDecoder(self._settings.mllp_max_frame_bytes)
        loop = asyncio.get_running_loop()
        idle_timeout = self._settings.mllp_idle_timeout_seconds
        frame_deadline: float | None = None  # set while a frame is partly received
        while True:
            timeout = idle_timeout
            if frame_deadline is not None:
                timeout = max(min(timeout, frame_deadline - loop.time()), 0)
            try:
                data = await asyncio.wait_for(reader.read(_READ_SIZE), timeout)
            except TimeoutError:
                if frame_deadline is not None and loop.time() >= frame_deadline:
                    log.info(
                        "closing connection from %s: frame not complete within %g s",
                        peer,
                        self._settings.mllp_frame_timeout_seconds,
                    )
                else:
                    log.info("closing idle connection from %s", peer)
                await self._keep_unfinished(decoder, peer)
                return
            if not data:
                await self._keep_unfinished(decoder, peer)
                return
            items = decoder.feed(data)
            await self._answer(items, writer, peer)
            if not decoder.pending_bytes:
                frame_deadline = None
            elif frame_deadline is None or items:
                frame_deadline = loop.time() + self._settings.mllp_frame_timeout_seconds

    async def _answer(
        self, items: list[Frame | BadFrame], writer: asyncio.StreamWriter, peer: str
    ) -> None:
        for item in items:
            started = time.perf_counter()
            if isinstance(item, BadFrame):
                result = await self._intake.reject_frame(item.raw, item.reason, peer=peer)
            else:
                result = await self._intake.accept(item.payload, peer=peer)
            self.messages_handled += 1
            if result.ack is not None:
                writer.write(encode_frame(result.ack.encode("utf-8")))
                await writer.drain()
            if self._metrics is not None:
                self._metrics.answered(result, time.perf_counter() - started)
