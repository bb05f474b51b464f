"""`careweave quarantine`: messages Careweave refused, kept with the reason, and their release."""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from exchanges.commit import ExchangeCommitter
from models.audit import AuditAction
from models.settings import load_settings
from workers.cli.common import connect_temporal, console, console_user_entry, fail, open_store
from workers.intake import MessageIntake

app = typer.Typer(
    name="quarantine",
    help="Messages Careweave refused, kept with the reason",
    no_args_is_help=True,
)


@app.command("list")
def quarantine_list(
    status: Annotated[str, typer.Option(help="held, released or all")] = "held",
    limit: int = 50,
) -> None:
    """List quarantined messages (reason and codes; no message content)."""
    store = open_store(load_settings())
    rows = store.quarantined(None if status == "all" else status, limit=limit)
    table = Table(title=f"Quarantine ({status})")
    for column in (
        "id",
        "received",
        "peer",
        "ack",
        "err",
        "type",
        "control id",
        "reason",
        "status",
    ):
        table.add_column(column, no_wrap=column in ("id", "control id"))
    for row in rows:
        table.add_row(
            str(row.id),
            row.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            row.peer,
            row.ack_code,
            row.error_code,
            row.message_type,
            row.control_id,
            row.reason,
            row.status,
        )
    console.print(table)


@app.command("show")
def quarantine_show(
    message_id: int,
    raw: Annotated[
        Path | None, typer.Option(help="Write the raw bytes to this file to fix them")
    ] = None,
) -> None:
    """Show one quarantined message; --raw FILE saves its bytes for editing."""
    store = open_store(load_settings())
    row = store.quarantined_message(message_id)
    if row is None:
        raise fail(f"no quarantined message #{message_id}")
    # The raw bytes are patient data: who read them is on the trail before they are shown.
    store.audit_log().append(
        console_user_entry(
            AuditAction.ACCESS,
            f"QuarantinedMessage/{message_id}",
            "raw bytes saved to a file" if raw is not None else "raw bytes shown",
        )
    )
    console.print(f"#{row.id} {row.status} from {row.peer} at {row.received_at}")
    console.print(f"answered {row.ack_code} (HL7 error {row.error_code}): {row.reason}")
    if row.release_result:
        console.print(f"released by {row.released_by}: {row.release_result}")
    if raw is not None:
        raw.write_bytes(row.raw)
        console.print(f"raw bytes ({len(row.raw)}) written to {raw}")
    else:
        console.print(row.raw.decode("utf-8", "replace").replace("\r", "\n"), markup=False)


@app.command("release")
def quarantine_release(
    message_id: int,
    fixed: Annotated[Path | None, typer.Option(help="Resubmit this edited file instead")] = None,
    by: Annotated[str, typer.Option(help="Who releases it")] = "",
) -> None:
    """Resubmit a quarantined message (as kept, or edited) through the same intake."""
    from workers.quarantine import ReleaseRefused, release

    settings = load_settings()
    store = open_store(settings)
    try:
        fixed_payload = fixed.read_bytes() if fixed else None
    except OSError as err:
        raise fail(f"{fixed}: cannot read ({err.strerror})") from err

    async def run() -> None:
        client = await connect_temporal(settings)
        intake = MessageIntake(
            store,
            ExchangeCommitter(client, settings),
            fallback_charset=settings.fallback_charset,
            pseudonym_key=settings.resolved_pseudonym_key(),
        )
        try:
            released = await release(
                store,
                intake,
                message_id,
                released_by=by or getpass.getuser(),
                fixed_payload=fixed_payload,
            )
        except ReleaseRefused as err:
            raise fail(str(err)) from err
        console.print(f"released #{message_id}: {released.outcome.value} -> {released.workflow_id}")

    asyncio.run(run())
