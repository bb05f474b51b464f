"""`careweave ingest-batch`: apply HL7 batch files an EHR wrote during its downtime, through
the same intake as live MLLP traffic, or watch an inbox folder for them."""

from __future__ import annotations

import asyncio
import getpass
import re
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from exchanges.commit import ExchangeCommitter
from models.settings import Settings, load_settings
from workers.batch_inbox import BatchInbox, InboxVerdict
from workers.batch_ingest import (
    BatchIngest,
    BatchPlan,
    BatchReport,
    EngineUnavailable,
    StepOutcome,
    read_and_plan,
)
from workers.cli.common import (
    configure_logging,
    connect_temporal,
    console,
    fail,
    open_store,
    stop_requested,
)
from workers.intake import MessageIntake

app = typer.Typer()

# Exit codes: 1 some messages were quarantined or a file could not be read (or, with
# --check, a file has problems); 3 a file is held for an operator (trailer mismatch).
HELD_EXIT = 3
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*s)?\s*")


def _rate(text: str | None, settings: Settings) -> float:
    if text is None:
        return settings.batch_rate_per_second
    match = _RATE.fullmatch(text)
    if not match or float(match.group(1)) <= 0:
        raise fail(f"--rate {text!r}: give messages per second, e.g. 20/s")
    return float(match.group(1))


def _local_zone(settings: Settings) -> ZoneInfo:
    try:
        return ZoneInfo(settings.batch_local_timezone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise fail(
            f"CAREWEAVE_BATCH_LOCAL_TIMEZONE={settings.batch_local_timezone!r} is not an IANA "
            "time zone (e.g. Europe/Paris)"
        ) from err


def _report(text: str) -> None:
    # One finding per line, never wrapped: operators grep these FILE:LINE lines.
    console.print(text, soft_wrap=True)


def _print_validation(plan: BatchPlan) -> None:
    """Every bad message and trailer problem as FILE:LINE, and how MSH-7 was read."""
    batch = plan.batch
    where = escape(str(plan.path))
    envelope = f" in {batch.batch_count} batch(es)" if batch.batch_count else ""
    _report(
        f"[bold]{where}[/bold]: {len(batch.messages)} good message(s){envelope}, "
        f"{len(batch.bad_messages)} bad, {len(batch.trailer_problems)} trailer problem(s)"
    )
    if batch.local_times:
        _report(
            f"  MSH-7 without offset read as {batch.local_zone} for {batch.local_times} "
            "message(s) (CAREWEAVE_BATCH_LOCAL_TIMEZONE)"
        )
    for bad in batch.bad_messages:
        kind = f" {bad.message_type}" if bad.message_type else ""
        _report(f"  {where}:{bad.line}{escape(kind)} [red]{escape(bad.reason)}[/red]")
    for problem in batch.trailer_problems:
        _report(
            f"  {where}:{problem.line} [red]trailer {problem.segment}: {escape(problem.text)}[/red]"
        )


def _print_summary(report: BatchReport) -> None:
    table = Table(title=f"{report.plan.path.name}: summary")
    table.add_column("message type")
    for outcome in StepOutcome:
        table.add_column(outcome.value, justify="right")
    for message_type in report.message_types:
        table.add_row(message_type, *(str(report.outcomes[(message_type, o)]) for o in StepOutcome))
    table.add_row("[bold]total[/bold]", *(f"[bold]{report.count(o)}[/bold]" for o in StepOutcome))
    console.print(table)


def _held_advice(plan: BatchPlan) -> None:
    _report(
        f"[yellow]held:[/yellow] {escape(str(plan.path))}: its trailer counts do not match "
        "what it holds, so nothing was applied. Check the file with its sender (a message "
        "may be missing); to apply the messages it holds as they are, run\n"
        f"  careweave ingest-batch {escape(str(plan.path))} --accept-trailer-mismatch"
    )


async def _ingest_one(
    ingest: BatchIngest, plan: BatchPlan, *, accept: bool, operator: str
) -> BatchReport:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"applying {escape(plan.path.name)}", total=len(plan.steps))

        def follow(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            return await ingest.ingest(
                plan, operator=operator, accept_trailer_mismatch=accept, on_step=follow
            )
        except EngineUnavailable as err:
            raise fail(f"{err}; what was applied is recorded: run the same command again") from err


def _plan(path: Path, settings: Settings, zone: ZoneInfo) -> BatchPlan | None:
    try:
        return read_and_plan(path, local_zone=zone, fallback_charset=settings.fallback_charset)
    except OSError as err:
        console.print(f"[red]error:[/red] {escape(str(path))}: cannot read ({err.strerror})")
        return None


def _verdict(report: BatchReport) -> InboxVerdict:
    return InboxVerdict.HELD if report.held else InboxVerdict.PROCESSED


@app.command("ingest-batch")
def ingest_batch(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="HL7 batch files (FHS/BHS envelopes or plain concatenated messages)"),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only validate and report; apply nothing")
    ] = False,
    rate: Annotated[
        str | None,
        typer.Option(
            help="Messages per second, e.g. 20/s (default CAREWEAVE_BATCH_RATE_PER_SECOND)"
        ),
    ] = None,
    accept_trailer_mismatch: Annotated[
        bool,
        typer.Option(
            "--accept-trailer-mismatch",
            help="Apply a file whose BTS-1/FTS-1 counts do not match what it holds",
        ),
    ] = False,
    watch: Annotated[
        Path | None,
        typer.Option(
            help="Watch this inbox folder (default CAREWEAVE_BATCH_INBOX when no FILE is given)"
        ),
    ] = None,
    by: Annotated[str, typer.Option(help="Who accepts a trailer mismatch (default: you)")] = "",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Validate batch files up front (every bad message as FILE:LINE and its reason), then
    apply each message through the same intake as live MLLP traffic (validation,
    quarantine, receipts, dedup by MSH-4 + MSH-10), in clinical order (MSH-7, then file
    order), at a steady rate. A file whose trailer counts do not add up is held: nothing
    applied, exit code 3, until run again with --accept-trailer-mismatch. Run again on the
    same file, it continues where it stopped; nothing is applied twice. Exit code 1 when
    a message was quarantined or a file could not be read.
    """
    configure_logging(verbose)
    settings = load_settings()
    zone = _local_zone(settings)
    operator = by or getpass.getuser()
    inbox = watch or (settings.batch_inbox if not files else None)
    if not files and inbox is None:
        raise fail("give batch FILEs, or --watch DIR (or set CAREWEAVE_BATCH_INBOX)")
    if inbox is not None and files:
        raise fail("give batch FILEs or --watch DIR, not both")
    if inbox is not None and not inbox.is_dir():
        raise fail(f"{inbox}: not a folder")
    if check and inbox is not None:
        raise fail("--check reads FILEs; it does not watch a folder")
    per_second = _rate(rate, settings)

    if check:
        troubled = False
        for path in files or []:
            plan = _plan(path, settings, zone)
            if plan is not None:
                _print_validation(plan)
            troubled |= plan is None or bool(plan.batch.bad_messages or plan.held)
        raise typer.Exit(1 if troubled else 0)

    async def open_ingest() -> BatchIngest:
        store = open_store(settings, verify_keys=True)
        client = await connect_temporal(settings)
        intake = MessageIntake(
            store,
            ExchangeCommitter(client, settings),
            fallback_charset=settings.fallback_charset,
            pseudonym_key=settings.resolved_pseudonym_key(),
        )
        return BatchIngest(store, intake, rate_per_second=per_second)

    async def apply_file(ingest: BatchIngest, path: Path) -> int:
        plan = _plan(path, settings, zone)
        if plan is None:
            return 1
        _print_validation(plan)
        if not plan.steps:
            console.print(f"[red]error:[/red] {escape(str(path))}: no HL7 segment in it")
            return 1
        report = await _ingest_one(ingest, plan, accept=accept_trailer_mismatch, operator=operator)
        if report.held:
            _held_advice(plan)
            return HELD_EXIT
        _print_summary(report)
        return 1 if report.count(StepOutcome.QUARANTINED) else 0

    async def run_files(paths: list[Path]) -> int:
        ingest = await open_ingest()
        worst = 0
        for path in paths:
            worst = max(worst, await apply_file(ingest, path))
        return worst

    async def run_inbox(folder: Path) -> None:
        ingest = await open_ingest()

        async def take(path: Path) -> InboxVerdict:
            plan = _plan(path, settings, zone)
            if plan is None or not plan.steps:
                return InboxVerdict.FAILED
            _print_validation(plan)
            try:
                report = await ingest.ingest(
                    plan, operator=operator, accept_trailer_mismatch=accept_trailer_mismatch
                )
            except EngineUnavailable as err:
                console.print(f"[yellow]{escape(str(err))}; will try again[/yellow]")
                return InboxVerdict.RETRY
            if report.held:
                _held_advice(plan)
            else:
                _print_summary(report)
            return _verdict(report)

        stop = stop_requested()
        watcher = BatchInbox(
            folder,
            take,
            poll_seconds=settings.batch_inbox_poll_seconds,
            settle_seconds=settings.batch_inbox_settle_seconds,
        )
        console.print(f"watching {escape(str(folder))} for batch files; Ctrl-C to stop")
        await watcher.run(stop)

    if inbox is not None:
        asyncio.run(run_inbox(inbox))
        return
    raise typer.Exit(asyncio.run(run_files(files or [])))
