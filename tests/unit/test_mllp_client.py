"""The MLLP client against a tiny in-test asyncio peer that answers each frame with an ACK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from adapters.hl7v2.ack import build_ack, parse_ack
from adapters.hl7v2.framing import Frame, MllpDecoder, encode_frame
from adapters.hl7v2.header import decode_message
from adapters.hl7v2.mllp_client import (
    MllpClient,
    MllpConnectionError,
    MllpError,
    MllpProtocolError,
    MllpTimeout,
    MllpTlsError,
)
from adapters.tls import client_tls_context, server_tls_context
from tests.support.certs import Pki

MESSAGE = "MSH|^~\\&|LIS|LAB|EHR|HOSP|20260101||ORU^R01|MSG-{n}|P|2.5.1\rOBR|1|||c\r"
TYPES = {"ORU": frozenset({"R01"})}

Behaviour = Callable[[bytes], bytes | None]


def ack_for(payload: bytes) -> bytes | None:
    decoded = decode_message(payload, supported_types=TYPES, supported_versions=frozenset({"2.5"}))
    ack = build_ack(decoded.header, "AA", ack_control_id="A", timestamp="20260101")
    return encode_frame(ack.encode())


@asynccontextmanager
async def peer(
    behaviour: Behaviour, *, byte_by_byte: bool = False
) -> AsyncIterator[tuple[int, list[int]]]:
    """Serve on a free port; yields the port and a list of connection counts."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        decoder = MllpDecoder(65536)
        try:
            while data := await reader.read(4096):
                for item in decoder.feed(data):
                    if isinstance(item, Frame):
                        answer = behaviour(item.payload)
                        if answer is None:
                            writer.close()
                            return
                        for i in range(len(answer)) if byte_by_byte else [0]:
                            writer.write(answer[i : i + 1] if byte_by_byte else answer)
                            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, connections
    finally:
        server.close()
        await server.wait_closed()


async def test_send_returns_the_ack_and_reuses_the_connection() -> None:
    async with (
        peer(ack_for) as (port, connections),
        MllpClient("127.0.0.1", port, timeout=2) as client,
    ):
        for n in range(3):
            ack = await client.send(MESSAGE.format(n=n))
            assert parse_ack(ack) == ("AA", f"MSG-{n}", "")
        assert len(connections) == 1


async def test_ack_split_over_several_writes() -> None:
    async with (
        peer(ack_for, byte_by_byte=True) as (port, _),
        MllpClient("127.0.0.1", port, timeout=2) as client,
    ):
        assert parse_ack(await client.send(MESSAGE.format(n=1).encode()))[0] == "AA"


async def test_timeout_then_reconnect() -> None:
    calls: list[bytes] = []

    def silent_then_ack(payload: bytes) -> bytes | None:
        calls.append(payload)
        return b"" if len(calls) == 1 else ack_for(payload)

    async with peer(silent_then_ack) as (port, connections):
        client = MllpClient("127.0.0.1", port, timeout=0.2)
        with pytest.raises(MllpTimeout):
            await client.send(MESSAGE.format(n=1))
        assert not client.connected
        ack = await client.send(MESSAGE.format(n=2))
        assert parse_ack(ack)[1] == "MSG-2"
        assert len(connections) == 2
        await client.close()


async def test_peer_closing_before_answering_then_reconnect() -> None:
    calls: list[bytes] = []

    def close_first(payload: bytes) -> bytes | None:
        calls.append(payload)
        return None if len(calls) == 1 else ack_for(payload)

    async with peer(close_first) as (port, connections):
        async with MllpClient("127.0.0.1", port, timeout=2) as client:
            with pytest.raises(MllpConnectionError):
                await client.send(MESSAGE.format(n=1))
            assert parse_ack(await client.send(MESSAGE.format(n=2)))[1] == "MSG-2"
        assert len(connections) == 2


async def test_invalid_answer_frame_is_a_protocol_error() -> None:
    async with peer(lambda _: b"garbage\x0bACK\x1c\x0d") as (port, _):
        async with MllpClient("127.0.0.1", port, timeout=2) as client:
            with pytest.raises(MllpProtocolError):
                await client.send(MESSAGE.format(n=1))


async def test_connection_refused() -> None:
    async with peer(ack_for) as (port, _):
        pass
    client = MllpClient("127.0.0.1", port, timeout=2)
    with pytest.raises(MllpConnectionError) as caught:
        await client.send(MESSAGE.format(n=1))
    assert isinstance(caught.value, MllpError)


async def test_deliver_sends_without_waiting_then_send_still_pairs_acks() -> None:
    received: list[bytes] = []

    def answer_only_acks_wanted(payload: bytes) -> bytes:
        received.append(payload)
        return b"" if b"|NE" in payload.split(b"\r", 1)[0] else (ack_for(payload) or b"")

    never_answered = MESSAGE.format(n=1).replace("|2.5.1\r", "|2.5.1|||NE\r", 1)
    async with (
        peer(answer_only_acks_wanted) as (port, connections),
        MllpClient("127.0.0.1", port, timeout=2) as client,
    ):
        await client.deliver(never_answered)
        ack = await client.send(MESSAGE.format(n=2))
        assert parse_ack(ack) == ("AA", "MSG-2", "")
        assert [p.split(b"|")[9] for p in received] == [b"MSG-1", b"MSG-2"]
        assert len(connections) == 1


async def test_per_message_timeout_overrides_the_client_timeout() -> None:
    async with (
        peer(lambda _: b"") as (port, _),
        MllpClient("127.0.0.1", port, timeout=30) as client,
    ):
        with pytest.raises(MllpTimeout, match=r"within 0\.2s"):
            await client.send(MESSAGE.format(n=1), timeout=0.2)


@asynccontextmanager
async def tls_peer_that_hangs_up(pki: Pki) -> AsyncIterator[int]:
    """A TLS peer that completes the handshake and closes without an alert or an answer:
    what a TLS 1.3 peer refusing our client certificate looks like when its alert is lost."""

    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    server = await asyncio.start_server(
        hang_up,
        "127.0.0.1",
        0,
        ssl=server_tls_context(cert_file=pki.server_cert, key_file=pki.server_key),
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_tls_peer_hanging_up_before_any_answer_is_named_a_tls_failure(pki: Pki) -> None:
    async with tls_peer_that_hangs_up(pki) as port:
        client = MllpClient(
            "127.0.0.1", port, timeout=5, ssl=client_tls_context(ca_file=pki.ca_cert)
        )
        with pytest.raises(MllpTlsError, match="client certificate"):
            await client.send(MESSAGE.format(n=90))
        await client.close()


async def test_a_plain_peer_hanging_up_is_a_connection_error_not_tls() -> None:
    async with peer(lambda _payload: None) as (port, _connections):
        client = MllpClient("127.0.0.1", port, timeout=2)
        with pytest.raises(MllpError) as failed:
            await client.send(MESSAGE.format(n=91))
        assert not isinstance(failed.value, MllpTlsError)
        await client.close()
