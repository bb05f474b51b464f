"""`careweave`: run the embedded stack, inspect quarantine, decide reviews, send test feeds."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowUpdateFailedError

from adapters.audit_log import AuditLog
from adapters.database import CareweaveStore, open_engine
from adapters.hl7v2.mllp_client import MllpClient
from adapters.payload_crypto import KeyRing, PayloadKeyError, add_key
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.review import ReviewAction, ReviewDecision, ReviewRequest
from models.settings import Settings, load_settings
from workers.intake import MessageIntake
from workers.payload_codec import load_payload_keys, payload_key_file
from workers.temporal_client import connect
from workers.temporal_commit import TemporalCommitter

if TYPE_CHECKING:
    from workers.stack import RunningStack

app = typer.Typer(help="Careweave clinical integration engine", no_args_is_help=True)
quarantine_app = typer.Typer(
    help="Messages Careweave refused, kept with the reason", no_args_is_help=True
)
review_app = typer.Typer(help="Exchanges waiting for a person", no_args_is_help=True)
audit_app = typer.Typer(
    help="The append-only, hash-chained audit trail: verify, list, export",
    no_args_is_help=True,
)
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(review_app, name="review")
app.add_typer(audit_app, name="audit")
keys_app = typer.Typer(help="Payload encryption keys (AES-256-GCM)", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
# Piped output (make, CI logs) is not a terminal; rich would assume 80 columns and
# squeeze the demo's table, so give it room there.
console = Console(width=None if sys.stdout.isatty() else 120)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _key_ring(settings: Settings) -> KeyRing:
    try:
        return load_payload_keys(settings)
    except PayloadKeyError as err:
        raise _fail(str(err)) from err


async def _client(settings: Settings) -> Client:
    key_ring = _key_ring(settings)
    try:
        return await connect(settings, key_ring)
    except RuntimeError as err:
        raise _fail(
            f"cannot reach Temporal at {settings.temporal_address} ({err}); "
            "is `careweave up` running?"
        ) from err


# -- the stack -----------------------------------------------------------------


@app.command()
def up(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Start the embedded stack on loopback and run until Ctrl-C."""
    from workers.stack import StackError, embedded_stack

    _logging(verbose)
    settings = load_settings()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Ctrl-C and a service manager's SIGTERM both mean: stop every part, in order.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with embedded_stack(settings) as stack:
            _print_stack(stack)
            console.print("Press Ctrl-C to stop.")
            await stop.wait()
            console.print("Stopping the gateway, the worker, the FHIR server and Temporal...")
        console.print("Stopped: every part of the stack has been shut down.")

    try:
        asyncio.run(run())
    except StackError as err:
        raise _fail(str(err)) from err


@app.command()
def worker(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run only the Temporal worker (production: as many as load needs)."""
    from adapters.fhir import FhirClient
    from models.destinations import RoutingConfigError, load_routing
    from workers.telemetry import configure_tracing
    from workers.worker import build_worker

    _logging(verbose)
    settings = load_settings()
    configure_tracing(settings, "careweave-worker")
    try:
        routing = load_routing(settings.destinations_file)
    except RoutingConfigError as err:
        raise _fail(str(err)) from err
    console.print(f"routing {settings.destinations_file}: {routing.label}")
    _store(settings, verify_keys=True)

    async def run() -> None:
        client = await _client(settings)
        async with FhirClient(
            settings.fhir_base_url, timeout=settings.fhir_timeout_seconds
        ) as fhir:
            await build_worker(client, settings, fhir, routing=routing).run()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@app.command()
def gateway(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run only the MLLP gateway against an existing Temporal cluster."""
    from workers.gateway import MllpGateway
    from workers.telemetry import configure_tracing

    _logging(verbose)
    settings = load_settings()
    configure_tracing(settings, "careweave-gateway")

    async def run() -> None:
        # Commit off (benchmark floor only) needs no Temporal at all.
        committer = (
            TemporalCommitter(await _client(settings), settings) if settings.mllp_commit else None
        )
        intake = MessageIntake(
            _store(settings, verify_keys=True),
            committer,
            fallback_charset=settings.fallback_charset,
            pseudonym_key=settings.resolved_pseudonym_key(),
        )
        server = MllpGateway(intake, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await server.start()
        console.print(f"MLLP gateway listening on {settings.mllp_host}:{server.port}")
        await stop.wait()
        await server.close()

    asyncio.run(run())


def _print_stack(stack: RunningStack) -> None:
    settings = stack.settings
    table = Table(title="Careweave embedded stack", show_header=False)
    table.add_row("MLLP gateway", f"{settings.mllp_host}:{stack.gateway.port}")
    table.add_row("Temporal", settings.temporal_address)
    table.add_row("Temporal UI", stack.ui_url)
    table.add_row("FHIR R4", settings.fhir_base_url)
    table.add_row("Routing", f"{settings.destinations_file} ({stack.routing.label})")
    for partner in stack.partners:
        table.add_row(
            f"Partner {partner.name}",
            f"MLLP 127.0.0.1:{partner.mllp_port}, control {partner.control_url}/messages",
        )
    table.add_row("State folder", str(settings.state_dir.resolve()))
    console.print(table)


@app.command()
def demo(
    keep_running: Annotated[
        bool | None,
        typer.Option(
            help="Keep the stack up after the feed so you can browse the UI "
            "(default: yes when run from a terminal)"
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start the stack, send the sample feed through the gateway, show what happened."""
    from workers.demo import run_demo

    _logging(verbose)
    if keep_running is None:
        keep_running = sys.stdin.isatty()
    run_demo(load_settings(), console, keep_running=keep_running)


@app.command()
def send(
    files: Annotated[
        list[Path], typer.Argument(help="Files of HL7 v2 messages (one or more per file)")
    ],
    host: str = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Default: CAREWEAVE_MLLP_PORT")] = None,
) -> None:
    """Send messages over MLLP and print each ACK (MSA-1 and the ERR text)."""
    from adapters.hl7v2.ack import parse_ack
    from workers.feed import read_feed_file

    settings = load_settings()

    async def run() -> None:
        async with MllpClient(host, port or settings.mllp_port, timeout=30) as client:
            for path in files:
                for index, message in enumerate(read_feed_file(path), start=1):
                    ack = await client.send(message)
                    code, control_id, error = parse_ack(ack)
                    console.print(f"{path}#{index}: {code} {control_id} {error}")

    asyncio.run(run())


# -- quarantine ----------------------------------------------------------------


def _store(settings: Settings, *, verify_keys: bool = False) -> CareweaveStore:
    store = CareweaveStore.from_url(settings.resolved_database_url, _key_ring(settings))
    if verify_keys:
        try:
            store.verify_payload_keys()
        except PayloadKeyError as err:
            raise _fail(str(err)) from err
    return store


@quarantine_app.command("list")
def quarantine_list(
    status: Annotated[str, typer.Option(help="held, released or all")] = "held",
    limit: int = 50,
) -> None:
    """List quarantined messages (reason and codes; no message content)."""
    store = _store(load_settings())
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


@quarantine_app.command("show")
def quarantine_show(
    message_id: int,
    raw: Annotated[
        Path | None, typer.Option(help="Write the raw bytes to this file to fix them")
    ] = None,
) -> None:
    """Show one quarantined message; --raw FILE saves its bytes for editing."""
    store = _store(load_settings())
    row = store.quarantined_message(message_id)
    if row is None:
        raise _fail(f"no quarantined message #{message_id}")
    # The raw bytes are patient data: who read them is on the trail before they are shown.
    store.audit_log().append(
        AuditEntry(
            actor_kind=ActorKind.USER,
            actor=getpass.getuser(),
            action=AuditAction.ACCESS,
            outcome=AuditOutcome.SUCCESS,
            resource=f"QuarantinedMessage/{message_id}",
            detail="raw bytes saved to a file" if raw is not None else "raw bytes shown",
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


@quarantine_app.command("release")
def quarantine_release(
    message_id: int,
    fixed: Annotated[Path | None, typer.Option(help="Resubmit this edited file instead")] = None,
    by: Annotated[str, typer.Option(help="Who releases it")] = "",
) -> None:
    """Resubmit a quarantined message (as kept, or edited) through the same intake."""
    from workers.quarantine import ReleaseRefused, release

    settings = load_settings()
    store = _store(settings)
    try:
        fixed_payload = fixed.read_bytes() if fixed else None
    except OSError as err:
        raise _fail(f"{fixed}: cannot read ({err.strerror})") from err

    async def run() -> None:
        client = await _client(settings)
        intake = MessageIntake(
            store,
            TemporalCommitter(client, settings),
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
            raise _fail(str(err)) from err
        console.print(f"released #{message_id}: {released.outcome.value} -> {released.workflow_id}")

    asyncio.run(run())


# -- review --------------------------------------------------------------------


def _pending(raw: object) -> ReviewRequest | None:
    return ReviewRequest.model_validate(raw) if raw else None


@review_app.command("list")
def review_list() -> None:
    """Exchanges with a pending review (ReviewState = 'pending')."""
    settings = load_settings()

    async def run() -> None:
        client = await _client(settings)
        table = Table(title="Pending reviews")
        # The workflow id is what an operator copies into approve/reject: never cut it.
        table.add_column("workflow id", no_wrap=True)
        for column in ("review", "reason", "summary", "actions"):
            table.add_column(column)
        async for execution in client.list_workflows(
            "ReviewState = 'pending' AND ExecutionStatus = 'Running'"
        ):
            handle = client.get_workflow_handle(execution.id)
            request = _pending(await handle.query("pending_review"))
            if request is None:
                continue
            actions = ", ".join(f"{a.value}: {text}" for a, text in request.actions.items())
            table.add_row(
                execution.id, request.review_id, request.reason.value, request.summary, actions
            )
        console.print(table)

    asyncio.run(run())


def _decide(
    workflow_id: str,
    action: ReviewAction,
    reason: str,
    reviewer: str,
    *,
    edited_message: str | None = None,
) -> None:
    settings = load_settings()

    async def run() -> None:
        client = await _client(settings)
        handle = client.get_workflow_handle(workflow_id)
        request = _pending(await handle.query("pending_review"))
        if request is None:
            raise _fail(f"{workflow_id} has no pending review")
        decision = ReviewDecision(
            review_id=request.review_id,
            action=action,
            reason=reason,
            reviewer=reviewer or getpass.getuser(),
            edited_message=edited_message,
        )

        def audited(outcome: AuditOutcome) -> AuditEntry:
            # The reason stays in the workflow history; the trail keeps the action only.
            return AuditEntry(
                actor_kind=ActorKind.USER,
                actor=decision.reviewer[:200],
                action=AuditAction.REVIEW_DECISION,
                outcome=outcome,
                exchange=workflow_id,
                resource=request.review_id,
                detail=action.value,
            )

        audit_log = _audit_log(settings)
        try:
            await handle.execute_update(
                "decide_review", decision, rpc_timeout=timedelta(seconds=30)
            )
        except WorkflowUpdateFailedError as err:
            await audit_log.aappend(audited(AuditOutcome.REFUSED))
            raise _fail(f"decision refused: {err.cause}") from err
        await audit_log.aappend(audited(AuditOutcome.SUCCESS))
        console.print(f"{action.value} recorded for {workflow_id} ({request.review_id})")

    asyncio.run(run())


ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the history)")]
ReviewerOption = Annotated[str, typer.Option("--reviewer", help="Who decides (default: you)")]


@review_app.command("approve")
def review_approve(workflow_id: str, reason: ReasonOption, reviewer: ReviewerOption = "") -> None:
    """Approve the pending review of an exchange."""
    _decide(workflow_id, ReviewAction.APPROVE, reason, reviewer)


@review_app.command("reject")
def review_reject(workflow_id: str, reason: ReasonOption, reviewer: ReviewerOption = "") -> None:
    """Reject the pending review of an exchange."""
    _decide(workflow_id, ReviewAction.REJECT, reason, reviewer)


@review_app.command("retry")
def review_retry(workflow_id: str, reason: ReasonOption, reviewer: ReviewerOption = "") -> None:
    """Ask the exchange to retry the step under review."""
    _decide(workflow_id, ReviewAction.RETRY, reason, reviewer)


@review_app.command("skip")
def review_skip(workflow_id: str, reason: ReasonOption, reviewer: ReviewerOption = "") -> None:
    """Let an ordered-delivery queue move on without the event under review."""
    _decide(workflow_id, ReviewAction.SKIP, reason, reviewer)


@review_app.command("edit")
def review_edit(
    workflow_id: str,
    message_file: Annotated[Path, typer.Option("--message", help="The corrected HL7 v2 message")],
    reason: ReasonOption,
    reviewer: ReviewerOption = "",
) -> None:
    """Send a corrected message in place of the one a destination refused."""
    from workers.feed import read_feed_file

    messages = read_feed_file(message_file)
    if len(messages) != 1:
        raise _fail(f"{message_file}: holds {len(messages)} messages; an edit is exactly one")
    _decide(
        workflow_id,
        ReviewAction.EDIT,
        reason,
        reviewer,
        edited_message=messages[0].decode("utf-8", errors="strict"),
    )


# -- audit ---------------------------------------------------------------------


def _audit_log(settings: Settings) -> AuditLog:
    # No payload keys needed: the trail holds no message content, and an auditor
    # should not have to hold the keys that open it.
    return AuditLog(open_engine(settings.resolved_database_url))


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the hash chain from the first row; exit 1 naming the first broken link."""
    verification = _audit_log(load_settings()).verify()
    if verification.first_break is not None:
        broken = verification.first_break
        raise _fail(
            f"audit chain broken: {broken.reason} "
            f"({verification.rows_checked} earlier rows verified)"
        )
    if verification.last_seq is None:
        console.print("audit trail empty: 0 rows checked, OK")
        return
    console.print(
        f"{verification.rows_checked} rows checked, chain OK; "
        f"last seq {verification.last_seq}, hash {verification.last_hash}"
    )


@audit_app.command("list")
def audit_list(
    limit: Annotated[int, typer.Option(min=1, help="Newest rows to show")] = 50,
    exchange: Annotated[str | None, typer.Option(help="Only this exchange (workflow id)")] = None,
) -> None:
    """The newest audit rows, newest first (who, what, which exchange, outcome)."""
    records = _audit_log(load_settings()).records(limit=limit, exchange=exchange, newest_first=True)
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


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option("--out", help="File to write (NDJSON)")],
    exchange: Annotated[str | None, typer.Option(help="Only this exchange (workflow id)")] = None,
) -> None:
    """Write the trail as FHIR R4 AuditEvent resources, one JSON object per line (NDJSON,
    as FHIR bulk data does), oldest first; each carries its seq, hash and prev_hash."""
    import json

    from adapters.audit_log import to_fhir_audit_event

    audit_log = _audit_log(load_settings())
    written = 0
    try:
        with out.open("w", encoding="utf-8") as export:
            for record in audit_log.in_order(exchange=exchange):
                export.write(json.dumps(to_fhir_audit_event(record), separators=(",", ":")))
                export.write("\n")
                written += 1
    except OSError as err:
        raise _fail(f"{out}: cannot write ({err.strerror})") from err
    console.print(f"{written} AuditEvent resources written to {out}")


# -- payload keys --------------------------------------------------------------


@keys_app.command("new")
def keys_new(
    key_id: Annotated[str | None, typer.Option(help="id for the new key (default k<time>)")] = None,
) -> None:
    """Add a key to the key file; it encrypts from the next start on, older keys still decrypt."""
    settings = load_settings()
    path = payload_key_file(settings)
    try:
        added = add_key(path, key_id)
    except PayloadKeyError as err:
        raise _fail(str(err)) from err
    console.print(
        f"added payload key {added} to {path}; restart the worker, gateway and API to use it"
    )


@keys_app.command("list")
def keys_list() -> None:
    """Key ids in the ring (never key material); the last one encrypts."""
    ring = _key_ring(load_settings())
    for key_id in ring.key_ids:
        marker = "  (encrypts)" if key_id == ring.current_key_id else ""
        console.print(f"{key_id}{marker}", markup=False)


if __name__ == "__main__":
    app()
