"""What several command groups share: the console, failing with a reason, and opening
the engine's parts (payload keys, Temporal, the database, the audit trail, the API)."""

from __future__ import annotations

import asyncio
import getpass
import logging
import signal
import sys
from typing import Any

import httpx
import typer
from rich.console import Console
from temporalio.client import Client

from adapters.audit_log import AuditLog
from adapters.database import CareweaveStore, open_engine
from adapters.payload_crypto import KeyRing, PayloadKeyError
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.settings import Settings
from workers.payload_codec import load_payload_keys
from workers.temporal_client import connect

# Piped output (make, CI logs) is not a terminal; rich would assume 80 columns and
# squeeze the demo's table, so give it room there.
console = Console(width=None if sys.stdout.isatty() else 120)


def fail(message: str) -> typer.Exit:
    """Print the reason and return the exit (code 1) for the caller to raise."""
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


def stop_requested() -> asyncio.Event:
    """Set by Ctrl-C or a service manager's SIGTERM: both mean stop every part, in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def load_key_ring(settings: Settings) -> KeyRing:
    try:
        return load_payload_keys(settings)
    except PayloadKeyError as err:
        raise fail(str(err)) from err


async def connect_temporal(settings: Settings) -> Client:
    key_ring = load_key_ring(settings)
    try:
        return await connect(settings, key_ring)
    except RuntimeError as err:
        raise fail(
            f"cannot reach Temporal at {settings.temporal_address} ({err}); "
            "is `careweave up` running?"
        ) from err


def open_store(settings: Settings, *, verify_keys: bool = False) -> CareweaveStore:
    store = CareweaveStore.from_url(settings.resolved_database_url, load_key_ring(settings))
    if verify_keys:
        try:
            store.verify_payload_keys()
        except PayloadKeyError as err:
            raise fail(str(err)) from err
    return store


def open_audit_log(settings: Settings) -> AuditLog:
    # No payload keys needed: the trail holds no message content, and an auditor
    # should not have to hold the keys that open it.
    return AuditLog(open_engine(settings.resolved_database_url))


def console_user_entry(action: AuditAction, resource: str, detail: str) -> AuditEntry:
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


def read_password(password_stdin: bool, *, confirm: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)
    return password


# -- the API, as the logged-in user ---------------------------------------------------


def _api_token(settings: Settings) -> str:
    token_file = settings.resolved_token_file
    try:
        return token_file.read_text().strip()
    except FileNotFoundError as err:
        raise fail(f"not logged in ({token_file} missing): run `careweave login`") from err


def api_call(
    settings: Settings, method: str, path: str, *, json: object | None = None
) -> dict[str, Any]:
    """One authenticated API call; a refusal exits with the API's reason."""
    url = f"{settings.resolved_api_url}{path}"
    headers = {"Authorization": f"Bearer {_api_token(settings)}"}
    try:
        answer = httpx.request(method, url, json=json, headers=headers, timeout=60)
    except httpx.TransportError as err:
        raise fail(f"cannot reach the API at {settings.resolved_api_url} ({err})") from err
    if answer.is_success:
        body: dict[str, Any] = answer.json()
        return body
    raise fail(refusal_text(answer))


def refusal_text(answer: httpx.Response) -> str:
    """The API's refusal for people: status, the OperationOutcome's diagnostics, a hint."""
    try:
        reason = answer.json()["issue"][0]["diagnostics"]
    except (ValueError, KeyError, IndexError, TypeError):
        reason = answer.text[:200]
    hint = {401: " (run `careweave login`)", 403: " (your role does not allow this)"}
    return f"refused ({answer.status_code}): {reason}{hint.get(answer.status_code, '')}"
