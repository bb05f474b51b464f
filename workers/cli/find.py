"""`careweave find`: the exchanges a patient, visit, order, accession or message went
through, found through the API by the keyed pseudonym of what is typed (never sent to
Temporal in clear, never in a URL)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from models.search import BusinessKeyKind, ExchangeHit
from models.settings import load_settings
from workers.cli.common import api_call, console, fail

app = typer.Typer()


def _option(flag: str, what: str) -> object:
    return typer.Option(flag, help=f"find by {what}", show_default=False)


@app.command("find")
def find(
    mrn: Annotated[str | None, _option("--mrn", "the patient identifier (PID-3)")] = None,
    visit: Annotated[str | None, _option("--visit", "the visit number (PV1-19)")] = None,
    placer: Annotated[
        str | None, _option("--placer", "the placer order number (ORC-2/OBR-2)")
    ] = None,
    filler: Annotated[
        str | None, _option("--filler", "the filler order number (ORC-3/OBR-3)")
    ] = None,
    accession: Annotated[str | None, _option("--accession", "the accession (OBR-18)")] = None,
    control_id: Annotated[
        str | None, _option("--control-id", "a message control id (MSH-10)")
    ] = None,
    facility: Annotated[
        str | None, typer.Option("--facility", help="only exchanges of this facility code")
    ] = None,
) -> None:
    """Exchanges by one business key, newest first."""
    given = {
        kind: value
        for kind, value in (
            (BusinessKeyKind.MRN, mrn),
            (BusinessKeyKind.VISIT, visit),
            (BusinessKeyKind.PLACER, placer),
            (BusinessKeyKind.FILLER, filler),
            (BusinessKeyKind.ACCESSION, accession),
            (BusinessKeyKind.CONTROL_ID, control_id),
        )
        if value is not None
    }
    if len(given) != 1:
        raise fail(
            "give exactly one of --mrn, --visit, --placer, --filler, --accession, --control-id"
        )
    [(kind, value)] = given.items()
    if not value.strip():
        raise fail(f"--{kind.value} is empty")
    body = {"kind": kind.value, "value": value, "facility": facility}
    answer = api_call(load_settings(), "POST", "/exchanges/search", json=body)
    hits = [ExchangeHit.model_validate(item) for item in answer["exchanges"]]
    # The title names the kind only: a terminal's scrollback is no place for the value.
    table = Table(title=f"Exchanges found by {kind.value}: {len(hits)}")
    table.add_column("workflow id", no_wrap=True)
    for column in ("exchange", "status", "facility", "review", "execution", "started", "closed"):
        table.add_column(column)
    for hit in hits:
        table.add_row(
            hit.workflow_id,
            hit.exchange or "",
            hit.exchange_status or "",
            hit.facility or "",
            hit.review_state or "",
            hit.execution_status or "",
            hit.start_time.strftime("%Y-%m-%d %H:%M:%S"),
            hit.close_time.strftime("%Y-%m-%d %H:%M:%S") if hit.close_time else "",
        )
    console.print(table)
