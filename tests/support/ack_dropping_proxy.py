"""A loopback TCP proxy in front of a partner system that loses the ACK of one message on
its way back: the partner received and acknowledged the message, Careweave never hears so.

The fault is on the test's side of the wire only (the partner is someone else's program):
each connection to the proxy gets its own connection to the partner, bytes go both ways
unchanged, except that the first MLLP frame from the partner acknowledging (MSA-2) the
first message that ``drop_ack_of`` picks is swallowed. The partner's own log stays the
record of what it received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from adapters.hl7v2.framing import Frame, MllpDecoder

_MAX_FRAME = 1024 * 1024


def _field(message: bytes, segment: str, number: int) -> str:
    for line in message.decode(errors="replace").split("\r"):
        if line.startswith(segment + "|"):
            fields = line.split("|")
            # MSH-1 is the field separator itself: MSH-n is at index n - 1.
            index = number - 1 if segment == "MSH" else number
            return fields[index] if index < len(fields) else ""
    return ""


async def _read(reader: asyncio.StreamReader) -> bytes:
    """The next bytes, or b"" once the peer has gone (closed or reset alike)."""
    try:
        return await reader.read(65536)
    except ConnectionError:
        return b""


@dataclass
class AckDroppingProxy:
    """Where Careweave should send (``port``) and what the proxy did."""

    port: int
    # MSH-10 of the message whose ACK the proxy is to lose; set when it passes through.
    target_control_id: str | None = None
    dropped_acks: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def ack_dropping_proxy(
    partner_host: str, partner_port: int, drop_ack_of: Callable[[str], bool]
) -> AsyncIterator[AckDroppingProxy]:
    """Listen on a free loopback port until the block ends; ``drop_ack_of(message text)``
    picks the message (its first sending) whose ACK is lost, once."""
    proxy = AckDroppingProxy(port=0)
    tasks: set[asyncio.Task[None]] = set()

    async def to_partner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MllpDecoder(_MAX_FRAME)
        while data := await _read(reader):
            for frame in decoder.feed(data):
                if (
                    isinstance(frame, Frame)
                    and proxy.target_control_id is None
                    and drop_ack_of(frame.payload.decode(errors="replace"))
                ):
                    proxy.target_control_id = _field(frame.payload, "MSH", 10)
            writer.write(data)
            await writer.drain()
        writer.close()

    async def to_sender(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = MllpDecoder(_MAX_FRAME)
        while data := await _read(reader):
            # Whole frames only, so one ACK can be left out of the bytes passed on.
            for frame in decoder.feed(data):
                if not isinstance(frame, Frame):
                    continue
                acked = _field(frame.payload, "MSA", 2)
                if acked and acked == proxy.target_control_id and not proxy.dropped_acks:
                    proxy.dropped_acks.append(acked)
                    continue
                writer.write(b"\x0b" + frame.payload + b"\x1c\r")
            await writer.drain()
        writer.close()

    async def pipe(sender_reader: asyncio.StreamReader, sender: asyncio.StreamWriter) -> None:
        try:
            partner_reader, partner = await asyncio.open_connection(partner_host, partner_port)
        except OSError:
            sender.close()
            return
        directions = [
            asyncio.create_task(to_partner(sender_reader, partner)),
            asyncio.create_task(to_sender(partner_reader, sender)),
        ]
        try:
            # Either side closing ends the pair: the other side is closed with it.
            await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for direction in directions:
                direction.cancel()
            for writer in (partner, sender):
                writer.close()

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(pipe(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
