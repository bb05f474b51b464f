"""A small async MLLP client: send one message, wait for its one ACK frame."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from types import TracebackType

from adapters.hl7v2.framing import BadFrame, MllpDecoder, encode_frame
from models.errors import CareweaveError

_READ_SIZE = 65536


class MllpError(CareweaveError):
    """Base of the MLLP client's errors."""


class MllpConnectionError(MllpError):
    """Could not connect, or the peer closed the connection before answering."""


class MllpTlsError(MllpConnectionError):
    """The TLS handshake failed: the peer's certificate was not trusted, or it refused ours."""


class MllpTimeout(MllpError):
    """No complete ACK frame within the timeout."""


class MllpProtocolError(MllpError):
    """The peer answered with bytes that are not a valid MLLP frame."""


class MllpClient:
    """One connection to an MLLP peer, used for one message at a time.

    After a timeout or a protocol error the connection is closed, because a late ACK
    would otherwise be read as the answer to the next message. A dropped connection is
    reopened on the next ``send``; a message is never re-sent automatically, since the
    peer may have received it (the caller decides, with MSH-10 making a resend a duplicate).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        ssl: ssl_module.SSLContext | None = None,
        server_name: str | None = None,
        max_frame_bytes: int = 1024 * 1024,
        encoding: str = "utf-8",
    ) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._ssl = ssl
        # The name the peer's certificate must carry; by default the host we connect to.
        self._server_name = server_name
        self._max_frame_bytes = max_frame_bytes
        self._encoding = encoding
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        # A TLS connection nothing has been answered on yet: under TLS 1.3 a peer refusing
        # our client certificate does so after our side of the handshake has completed.
        self._unproven_tls = False
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> MllpClient:
        await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return (
            self._writer is not None
            and self._reader is not None
            and not self._writer.is_closing()
            and not self._reader.at_eof()
        )

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl_module.SSLError):
            pass

    async def send(self, message: str | bytes, *, timeout: float | None = None) -> str:
        """Send one message and return the text of the peer's ACK frame.

        ``timeout`` overrides the client's ACK timeout for this message.
        """
        payload = message.encode(self._encoding) if isinstance(message, str) else message
        wait = self._timeout if timeout is None else timeout
        async with self._lock:
            await self._ensure_connected()
            try:
                answer = await asyncio.wait_for(self._exchange(payload), wait)
                self._unproven_tls = False
                return answer
            except TimeoutError:
                await self.close()
                raise MllpTimeout(f"no ACK from {self._host}:{self._port} within {wait}s") from None
            except MllpConnectionError as error:
                refused = self._tls_refusal_hint()
                await self.close()
                if refused:
                    raise MllpTlsError(f"{error}{refused}") from error
                raise
            except MllpError:
                await self.close()
                raise
            except ssl_module.SSLError as error:
                # Under TLS 1.3 a peer refusing our client certificate says so only after
                # the handshake, on the first read.
                await self.close()
                raise MllpTlsError(
                    f"TLS with {self._host}:{self._port} failed: {error.reason or error}"
                ) from error
            except OSError as error:
                refused = self._tls_refusal_hint()
                await self.close()
                text = f"connection to {self._host}:{self._port} failed: {type(error).__name__}"
                if refused:
                    raise MllpTlsError(f"{text}{refused}") from error
                raise MllpConnectionError(text) from error

    def _tls_refusal_hint(self) -> str:
        # The peer's alert can be lost to the race between its close and our read (a reset
        # or an empty read instead of TLSV13_ALERT_CERTIFICATE_REQUIRED): say what it may be.
        if not self._unproven_tls:
            return ""
        return (
            " (TLS: the peer closed the connection before any answer after the handshake, "
            "as a peer refusing our client certificate does under TLS 1.3)"
        )

    async def deliver(self, message: str | bytes) -> None:
        """Send one message whose MSH-15 (NE) tells the peer never to answer it."""
        payload = message.encode(self._encoding) if isinstance(message, str) else message
        async with self._lock:
            await self._ensure_connected()
            assert self._writer is not None
            try:
                self._writer.write(encode_frame(payload))
                await asyncio.wait_for(self._writer.drain(), self._timeout)
            except TimeoutError:
                await self.close()
                raise MllpTimeout(
                    f"{self._host}:{self._port} did not take the message within {self._timeout}s"
                ) from None
            except OSError as error:
                await self.close()
                raise MllpConnectionError(
                    f"connection to {self._host}:{self._port} failed: {type(error).__name__}"
                ) from error

    async def _ensure_connected(self) -> None:
        if not self.connected:
            await self.close()
            await self._connect()

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=(self._server_name or self._host) if self._ssl else None,
                ),
                self._timeout,
            )
        except TimeoutError:
            raise MllpTimeout(f"connecting to {self._host}:{self._port} timed out") from None
        except ssl_module.SSLCertVerificationError as error:
            raise MllpTlsError(
                f"TLS to {self._host}:{self._port}: certificate verification failed: "
                f"{error.verify_message}"
            ) from error
        except ssl_module.SSLError as error:
            raise MllpTlsError(
                f"TLS handshake with {self._host}:{self._port} failed: {error.reason or error}"
            ) from error
        except OSError as error:
            raise MllpConnectionError(
                f"cannot connect to {self._host}:{self._port}: {type(error).__name__}"
            ) from error
        self._unproven_tls = self._ssl is not None

    async def _exchange(self, payload: bytes) -> str:
        assert self._reader is not None and self._writer is not None
        self._writer.write(encode_frame(payload))
        await self._writer.drain()
        decoder = MllpDecoder(self._max_frame_bytes)
        while True:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise MllpConnectionError(
                    f"{self._host}:{self._port} closed the connection before answering"
                )
            for item in decoder.feed(data):
                if isinstance(item, BadFrame):
                    raise MllpProtocolError(f"invalid answer frame: {item.reason}")
                return item.payload.decode(self._encoding, errors="replace")
