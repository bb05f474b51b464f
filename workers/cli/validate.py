"""`careweave validate`: check HL7 v2 files against the standard's message structures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from workers.cli.common import console, fail

app = typer.Typer()


@app.command()
def validate(
    files: Annotated[
        list[Path], typer.Argument(help="Files of HL7 v2 messages (one or more per file)")
    ],
    warnings: Annotated[
        bool, typer.Option(help="Also list warnings (table values, lengths); they never fail")
    ] = False,
) -> None:
    """Conformance of each message to its HL7 v2 structure (hl7apy): OK, or each error
    with its line, segment and field. Exit code 1 when any message has an error or a
    file cannot be read. Run on demand (onboarding a sender, a sample from a ticket):
    the engine's own path does not run this check per message.
    """
    from adapters.hl7v2.conformance import UnreadableFile, check_file

    failed = False
    for path in files:
        try:
            reports = check_file(path)
        except UnreadableFile as err:
            console.print(f"[red]error:[/red] {escape(str(err))}")
            failed = True
            continue
        for report in reports:
            label = escape(
                f"{path}:{report.first_line} {report.message_type or '?'} "
                f"(MSH-10 {report.control_id or '?'})"
            )
            shown = [f for f in report.findings if warnings or f.severity == "error"]
            if not report.errors:
                console.print(f"{label}: [green]OK[/green]")
            else:
                failed = True
                console.print(f"{label}: [red]{len(report.errors)} error(s)[/red]")
            for finding in shown:
                colour = "red" if finding.severity == "error" else "yellow"
                console.print(
                    f"  [{colour}]{finding.severity}[/{colour}] "
                    f"{escape(finding.where())}: {escape(finding.text)}"
                )
    if failed:
        raise fail("some messages do not conform (or a file could not be read)")
