"""`careweave audit`: verify, list and export the append-only, hash-chained audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from models.settings import load_settings
from workers.cli.common import console, fail, open_audit_log

app = typer.Typer(
    name="audit",
    help="The append-only, hash-chained audit trail: verify, list, export",
    no_args_is_help=True,
)


@app.command("verify")
def audit_verify(
    anchor: Annotated[
        str | None,
        typer.Option(
            help="SEQ:HASH printed by an earlier verify and kept elsewhere: also catches rows "
            "cut from the end or a chain rebuilt after it"
        ),
    ] = None,
) -> None:
    """Walk the hash chain from the first row; exit 1 naming the first broken link."""
    from models.audit import AuditAnchor

    try:
        expected = AuditAnchor.parse(anchor) if anchor else None
    except ValueError as err:
        raise fail(f"--anchor {anchor}: {err}") from err
    verification = open_audit_log(load_settings()).verify(expected)
    if verification.first_break is not None:
        broken = verification.first_break
        raise fail(
            f"audit chain broken: {broken.reason} "
            f"({verification.rows_checked} earlier rows verified)"
        )
    if verification.last_seq is None:
        console.print("audit trail empty: 0 rows checked, OK")
        return
    console.print(
        f"{verification.rows_checked} rows checked, chain OK; "
        f"last seq {verification.last_seq}, hash {verification.last_hash}",
        markup=False,
    )
    # Kept outside this database, it lets a later verify notice rows cut from the end.
    console.print(
        f"anchor: {verification.last_seq}:{verification.last_hash}", markup=False, soft_wrap=True
    )


@app.command("list")
def audit_list(
    limit: Annotated[int, typer.Option(min=1, help="Newest rows to show")] = 50,
    exchange: Annotated[str | None, typer.Option(help="Only this exchange (workflow id)")] = None,
) -> None:
    """The newest audit rows, newest first (who, what, which exchange, outcome)."""
    records = open_audit_log(load_settings()).records(
        limit=limit, exchange=exchange, newest_first=True
    )
    table = Table(title="Audit trail" + (f" of {exchange}" if exchange else ""))
    # Workflow ids are copied into other commands: never cut; filtered, they are the title.
    columns = ["seq", "recorded (UTC)", "actor", "action", "outcome"]
    columns += [] if exchange else ["exchange"]
    for column in columns:
        table.add_column(column, no_wrap=True)
    for column in ("resource", "detail"):
        table.add_column(column)
    for record in records:
        cells = [
            str(record.seq),
            record.recorded_at.strftime("%Y-%m-%d %H:%M:%S"),
            f"{record.actor_kind}:{record.actor}",
            record.action,
            record.outcome,
        ]
        cells += [] if exchange else [record.exchange or ""]
        table.add_row(
            *cells,
            record.resource or "",
            record.detail,
            style="red" if record.outcome != "success" else None,
        )
    console.print(table)


@app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option("--out", help="File to write (NDJSON)")],
    exchange: Annotated[str | None, typer.Option(help="Only this exchange (workflow id)")] = None,
) -> None:
    """Write the trail as FHIR R4 AuditEvent resources, one JSON object per line (NDJSON,
    as FHIR bulk data does), oldest first; each carries its seq, hash and prev_hash."""
    import json

    from adapters.audit_log import to_fhir_audit_event

    audit_log = open_audit_log(load_settings())
    written = 0
    try:
        with out.open("w", encoding="utf-8") as export:
            for record in audit_log.in_order(exchange=exchange):
                export.write(json.dumps(to_fhir_audit_event(record), separators=(",", ":")))
                export.write("\n")
                written += 1
    except OSError as err:
        raise fail(f"{out}: cannot write ({err.strerror})") from err
    console.print(f"{written} AuditEvent resources written to {out}")
