"""`careweave merge undo EXCHANGE --reason`: undo one merge of a patient-merge exchange.

Starts the patient-unmerge workflow for it (workers/merge_undo.py) and waits for its
summary. The undo is on the audit trail under the OS user, and each of its writes under the
worker; the merge stays in every history beside its undo.
"""

from __future__ import annotations

import asyncio
import getpass
from typing import Annotated

import typer
from rich.table import Table

from models.audit import AuditAction
from models.merge import UnmergeSummary
from models.settings import load_settings
from workers.cli.common import connect_temporal, console, console_user_entry, fail, open_audit_log
from workers.merge_undo import UndoRefused, undo_merge

app = typer.Typer(name="merge", help="Patient merges: undo one", no_args_is_help=True)


@app.command("undo")
def merge_undo(
    exchange: Annotated[str, typer.Argument(help="the patient-merge exchange id")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in every history)")],
    message: Annotated[
        str | None, typer.Option("--message", help="MSH-10 of the merge message (default: last)")
    ] = None,
    merge_index: Annotated[
        int | None, typer.Option("--merge", help="which MRG of that message (default: last)")
    ] = None,
) -> None:
    """Restore both records, their links and every re-pointed reference."""
    if not reason.strip():
        raise fail("--reason must say why")
    settings = load_settings()

    async def run() -> UnmergeSummary:
        client = await connect_temporal(settings)
        return await undo_merge(
            client,
            exchange,
            reason=reason.strip(),
            actor=getpass.getuser(),
            task_queue=settings.task_queue,
            control_id=message,
            merge_index=merge_index,
        )

    try:
        summary = asyncio.run(run())
    except UndoRefused as err:
        raise fail(str(err)) from err
    open_audit_log(settings).append(
        console_user_entry(AuditAction.MERGE_UNDO, exchange, "merge undo requested")
    )
    table = Table(title=f"Merge undone: {exchange}")
    for column in ("Patients", "references restored", "left for a person", "index event"):
        table.add_column(column)
    table.add_row(
        "restored" if summary.patients_restored else "unchanged",
        str(summary.references_restored),
        str(summary.references_not_restored),
        str(summary.index_event or "-"),
    )
    console.print(table)
