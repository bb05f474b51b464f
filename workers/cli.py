"""`careweave`: run the embedded stack, inspect quarantine, decide reviews, send test feeds."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.table import Table
from temporalio.client import Client

from adapters.audit_log import AuditLog
from adapters.database import CareweaveStore, open_engine
from adapters.hl7v2.mllp_client import MllpClient
from adapters.payload_crypto import KeyRing, PayloadKeyError, add_key
from exchanges.commit import ExchangeCommitter
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.identity import Role
from models.review import ReviewAction, ReviewRecord, ReviewRequest
from models.settings import Settings, load_settings
from workers.intake import MessageIntake
from workers.payload_codec import load_payload_keys, payload_key_file
from workers.temporal_client import connect

if TYPE_CHECKING:
    from adapters.users import UserDirectory
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
users_app = typer.Typer(help="Users of Careweave's own token issuer", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(review_app, name="review")
app.add_typer(audit_app, name="audit")
keys_app = typer.Typer(help="Payload encryption keys (AES-256-GCM)", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
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
            console.print(
                "Stopping the gateway, the worker, the API, the FHIR server and Temporal..."
            )
        console.print("Stopped: every part of the stack has been shut down.")

    try:
        asyncio.run(run())
    except StackError as err:
        raise _fail(str(err)) from err


@app.command()
def worker(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run only the Temporal worker (production: as many as load needs)."""
    from adapters.tls import TlsConfigError
    from models.destinations import RoutingConfigError, load_routing
    from models.fhir_auth import FhirAuthConfigError
    from workers.telemetry import configure_tracing
    from workers.worker import lab_fhir_client, open_worker

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
        async with lab_fhir_client(settings) as fhir, contextlib.AsyncExitStack() as scope:
            try:
                worker = await scope.enter_async_context(
                    open_worker(client, settings, fhir, routing=routing)
                )
            except RoutingConfigError as err:  # an unusable TLS file of a destination
                raise _fail(str(err)) from err
            # Ctrl-C and a service manager's SIGTERM both stop the worker gracefully, and only
            # then does the scope close its destination connections.
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            running = asyncio.create_task(worker.run())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not running.done():
                await worker.shutdown()
            await running  # a worker that failed by itself reports its error here
        console.print("Stopped: the worker and its destination connections are shut down.")

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except (FhirAuthConfigError, TlsConfigError) as err:
        raise _fail(str(err)) from err


@app.command()
def gateway(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run only the MLLP gateway against an existing Temporal cluster."""
    from adapters.tls import TlsConfigError
    from workers.gateway import MllpGateway
    from workers.telemetry import configure_tracing

    _logging(verbose)
    settings = load_settings()
    configure_tracing(settings, "careweave-gateway")

    async def run() -> None:
        # Commit off (benchmark floor only) needs no Temporal at all.
        committer = (
            ExchangeCommitter(await _client(settings), settings) if settings.mllp_commit else None
        )
        intake = MessageIntake(
            _store(settings, verify_keys=True),
            committer,
            fallback_charset=settings.fallback_charset,
            pseudonym_key=settings.resolved_pseudonym_key(),
        )
        try:
            server = MllpGateway(intake, settings)
        except TlsConfigError as err:
            raise _fail(f"MLLP gateway TLS: {err}") from err
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
    table.add_row("Review/codec API", stack.api_url)
    table.add_row("Sign in (decoded payloads in the UI)", f"{stack.api_url}/login")
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
        _console_user_entry(
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
            raise _fail(str(err)) from err
        console.print(f"released #{message_id}: {released.outcome.value} -> {released.workflow_id}")

    asyncio.run(run())


# -- review (through the API, as the logged-in user) ----------------------------------


def _api_token(settings: Settings) -> str:
    token_file = settings.resolved_token_file
    try:
        return token_file.read_text().strip()
    except FileNotFoundError as err:
        raise _fail(f"not logged in ({token_file} missing): run `careweave login`") from err


def _api_call(
    settings: Settings, method: str, path: str, *, json: object | None = None
) -> dict[str, Any]:
    """One authenticated API call; a refusal exits with the API's reason."""
    url = f"{settings.resolved_api_url}{path}"
    headers = {"Authorization": f"Bearer {_api_token(settings)}"}
    try:
        answer = httpx.request(method, url, json=json, headers=headers, timeout=60)
    except httpx.TransportError as err:
        raise _fail(f"cannot reach the API at {settings.resolved_api_url} ({err})") from err
    if answer.is_success:
        body: dict[str, Any] = answer.json()
        return body
    raise _fail(_refusal_text(answer))


def _refusal_text(answer: httpx.Response) -> str:
    try:
        reason = answer.json()["issue"][0]["diagnostics"]
    except (ValueError, KeyError, IndexError, TypeError):
        reason = answer.text[:200]
    hint = {401: " (run `careweave login`)", 403: " (your role does not allow this)"}
    return f"refused ({answer.status_code}): {reason}{hint.get(answer.status_code, '')}"


@review_app.command("list")
def review_list() -> None:
    """Exchanges with a pending review (ReviewState = 'pending')."""
    settings = load_settings()
    listed = _api_call(settings, "GET", "/reviews")
    table = Table(title="Pending reviews")
    # The workflow id is what an operator copies into approve/reject: never cut it.
    table.add_column("workflow id", no_wrap=True)
    for column in ("review", "reason", "summary", "actions"):
        table.add_column(column)
    for item in listed["reviews"]:
        request = ReviewRequest.model_validate(item["review"])
        actions = ", ".join(f"{a.value}: {text}" for a, text in request.actions.items())
        table.add_row(
            item["workflow_id"], request.review_id, request.reason.value, request.summary, actions
        )
    console.print(table)


def _decide(
    workflow_id: str, action: ReviewAction, reason: str, *, edited_message: str | None = None
) -> None:
    settings = load_settings()
    path = f"/reviews/{quote(workflow_id, safe='/')}"
    pending = _api_call(settings, "GET", path)["review"]
    if pending is None:
        raise _fail(f"{workflow_id} has no pending review")
    review_id = ReviewRequest.model_validate(pending).review_id
    body = {"review_id": review_id, "action": action.value, "reason": reason}
    if edited_message is not None:
        body["edited_message"] = edited_message
    record = ReviewRecord.model_validate(_api_call(settings, "POST", f"{path}/decision", json=body))
    console.print(
        f"{action.value} recorded for {workflow_id} ({review_id}) by {record.decision.reviewer}"
    )


ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the history)")]


@review_app.command("approve")
def review_approve(workflow_id: str, reason: ReasonOption) -> None:
    """Approve the pending review of an exchange."""
    _decide(workflow_id, ReviewAction.APPROVE, reason)


@review_app.command("reject")
def review_reject(workflow_id: str, reason: ReasonOption) -> None:
    """Reject the pending review of an exchange."""
    _decide(workflow_id, ReviewAction.REJECT, reason)


@review_app.command("retry")
def review_retry(workflow_id: str, reason: ReasonOption) -> None:
    """Ask the exchange to retry the step under review."""
    _decide(workflow_id, ReviewAction.RETRY, reason)


@review_app.command("skip")
def review_skip(workflow_id: str, reason: ReasonOption) -> None:
    """Let an ordered-delivery queue move on without the event under review."""
    _decide(workflow_id, ReviewAction.SKIP, reason)


@review_app.command("edit")
def review_edit(
    workflow_id: str,
    message_file: Annotated[Path, typer.Option("--message", help="The corrected HL7 v2 message")],
    reason: ReasonOption,
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
        edited_message=messages[0].decode("utf-8", errors="strict"),
    )


# -- audit ---------------------------------------------------------------------


def _audit_log(settings: Settings) -> AuditLog:
    # No payload keys needed: the trail holds no message content, and an auditor
    # should not have to hold the keys that open it.
    return AuditLog(open_engine(settings.resolved_database_url))


@audit_app.command("verify")
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
        raise _fail(f"--anchor {anchor}: {err}") from err
    verification = _audit_log(load_settings()).verify(expected)
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
        f"last seq {verification.last_seq}, hash {verification.last_hash}",
        markup=False,
    )
    # Kept outside this database, it lets a later verify notice rows cut from the end.
    console.print(
        f"anchor: {verification.last_seq}:{verification.last_hash}", markup=False, soft_wrap=True
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


# -- users, login and the API ------------------------------------------------------------


def _read_password(password_stdin: bool, *, confirm: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return password


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[list[Role], typer.Option("--role", help="reviewer or ops; repeat for both")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Add a user of Careweave's own token issuer (or replace its password and roles)."""
    settings = load_settings()
    directory = _users(settings)
    password = _read_password(password_stdin, confirm=True)
    earlier = directory.get(name)
    try:
        account = directory.add(name, password, role)
    except ValueError as err:
        raise _fail(f"user {name}: {err}") from err
    roles = ", ".join(sorted(account.role_set))
    change = f"roles {earlier.roles} -> {account.roles}, new password" if earlier else "added"
    _audit_account_change(settings, name, f"{change} (roles now {roles})")
    console.print(f"user {name} saved with roles {roles}")


@users_app.command("remove")
def users_remove(name: str) -> None:
    """Remove a user: its tokens stop working at once, not when they expire."""
    settings = load_settings()
    if not _users(settings).remove(name):
        raise _fail(f"no user {name}")
    _audit_account_change(settings, name, "removed")
    console.print(f"user {name} removed")


@users_app.command("list")
def users_list() -> None:
    """Users of Careweave's own token issuer and their roles (never password hashes)."""
    table = Table(title="Users")
    for column in ("user", "roles", "since (UTC)"):
        table.add_column(column, no_wrap=True)
    for account in _users(load_settings()).accounts():
        table.add_row(account.username, account.roles, f"{account.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


def _users(settings: Settings) -> UserDirectory:
    from adapters.users import UserDirectory

    return UserDirectory.from_url(settings.resolved_database_url)


def _audit_account_change(settings: Settings, name: str, detail: str) -> None:
    # Granting access is itself an access decision: the trail names who made it.
    _audit_log(settings).append(_console_user_entry(AuditAction.ACCOUNT, f"User/{name}", detail))


def _console_user_entry(action: AuditAction, resource: str, detail: str) -> AuditEntry:
    """A successful action by the OS user at the console: commands that work on the
    database directly (not through the API) have no token to name anyone else."""
    return AuditEntry(
        actor_kind=ActorKind.USER,
        actor=getpass.getuser(),
        action=action,
        outcome=AuditOutcome.SUCCESS,
        resource=resource,
        detail=detail,
    )


@app.command()
def login(
    username: Annotated[str, typer.Option(help="Default: your login name")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Get a token from the API and keep it (0600) for the other commands."""
    settings = load_settings()
    username = username or getpass.getuser()
    password = _read_password(password_stdin, confirm=False)
    try:
        answer = httpx.post(
            f"{settings.resolved_api_url}/auth/token",
            data={"grant_type": "password", "username": username, "password": password},
            timeout=60,
        )
    except httpx.TransportError as err:
        raise _fail(f"cannot reach the API at {settings.resolved_api_url} ({err})") from err
    if not answer.is_success:
        raise _fail(f"login {_refusal_text(answer)}")
    token = answer.json()
    token_file = settings.resolved_token_file
    token_file.parent.mkdir(parents=True, exist_ok=True)
    # Created 0600 so the token is never readable by others, even for a moment.
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token["access_token"])
    hours = int(token["expires_in"]) // 3600
    console.print(f"logged in as {username}; token kept in {token_file} (valid {hours} h)")


@app.command()
def api(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run only the review and codec API (production: behind TLS)."""
    from workers.api import create_api, serving_api

    _logging(verbose)
    settings = load_settings()
    # The API encodes for the UI too: a key id with other bytes would write unreadable data.
    _store(settings, verify_keys=True)

    async def run() -> None:
        client = await _client(settings)
        api_app = create_api(
            settings,
            client,
            client.data_converter.payload_codec,
            _audit_log(settings).aappend,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            async with serving_api(api_app, settings.api_host, settings.api_port) as port:
                console.print(f"API listening on http://{settings.api_host}:{port}")
                await stop.wait()
        except OSError as err:
            raise _fail(str(err)) from err

    asyncio.run(run())


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
