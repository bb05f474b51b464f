"""`careweave send`: a test feed over MLLP, as a sending system would send it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from adapters.hl7v2.mllp_client import MllpClient
from models.settings import load_settings
from workers.cli.common import console

app = typer.Typer()


@app.command()
def send(
    files: Annotated[
        list[Path], typer.Argument(help="Files of HL7 v2 messages (one or more per file)")
    ],
    host: str = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Default: CAREWEAVE_MLLP_PORT")] = None,
    ack_timeout: Annotated[float, typer.Option(help="Seconds to wait for an ACK")] = 30,
    conditional_wait: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for an ACK the receiver sends only on error or "
            "only on success (MSH-15 ER or SU)"
        ),
    ] = 5,
) -> None:
    """Send messages over MLLP and print each ACK (MSA-1 and the ERR text).

    MSH-15 decides whether to wait: NE is sent without waiting, ER and SU are waited for
    --conditional-wait seconds. Exit code 1 when a message was refused (AE/AR/CE/CR) or
    could not be sent; sending stops at the first message that could not be sent.
    """
    from adapters.hl7v2.ack import AckParseError, parse_ack
    from adapters.hl7v2.header import accept_ack_condition
    from adapters.hl7v2.mllp_client import MllpError, MllpTimeout
    from workers.feed import read_feed_file

    settings = load_settings()
    target_port = port or settings.mllp_port
    feeds = [(path, read_feed_file(path)) for path in files]

    async def send_one(client: MllpClient, message: bytes) -> tuple[str, bool]:
        """What to print for one message, and whether it was accepted."""
        condition = accept_ack_condition(message)
        if condition == "NE":
            await client.deliver(message)
            return "sent; MSH-15 NE asks for no ACK", True
        if condition in ("ER", "SU"):
            try:
                ack = await client.send(message, timeout=conditional_wait)
            except MllpTimeout:
                if condition == "ER":
                    return f"no ACK in {conditional_wait:g}s; MSH-15 ER: accepted", True
                return f"no ACK in {conditional_wait:g}s; MSH-15 SU: not accepted", False
        else:
            ack = await client.send(message)
        try:
            code, control_id, error = parse_ack(ack)
        except AckParseError as err:
            return f"the answer is not an ACK ({err})", False
        return f"{code} {control_id} {error}".rstrip(), code in ("AA", "CA")

    async def run() -> int:
        refused = 0
        try:
            async with MllpClient(host, target_port, timeout=ack_timeout) as client:
                for path, messages in feeds:
                    for index, message in enumerate(messages, start=1):
                        where = f"{path}#{index}"
                        try:
                            line, accepted = await send_one(client, message)
                        except MllpError as err:
                            console.print(f"{where}: not sent: {err}", markup=False)
                            return 1
                        refused += not accepted
                        console.print(f"{where}: {line}", markup=False)
        except MllpError as err:
            console.print(f"cannot send to {host}:{target_port}: {err}", markup=False)
            return 1
        return 1 if refused else 0

    raise typer.Exit(asyncio.run(run()))
