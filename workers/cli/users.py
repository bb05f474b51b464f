"""`careweave users`: the users of Careweave's own token issuer; every change is audited."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from models.audit import AuditAction
from models.identity import Role
from models.settings import Settings, load_settings
from workers.cli.common import (
    console,
    console_user_entry,
    fail,
    open_audit_log,
    read_password,
)

if TYPE_CHECKING:
    from adapters.users import UserDirectory

app = typer.Typer(name="users", help="Users of Careweave's own token issuer", no_args_is_help=True)


@app.command("add")
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
    password = read_password(password_stdin, confirm=True)
    earlier = directory.get(name)
    try:
        account = directory.add(name, password, role)
    except ValueError as err:
        raise fail(f"user {name}: {err}") from err
    roles = ", ".join(sorted(account.role_set))
    change = f"roles {earlier.roles} -> {account.roles}, new password" if earlier else "added"
    _audit_account_change(settings, name, f"{change} (roles now {roles})")
    console.print(f"user {name} saved with roles {roles}")


@app.command("remove")
def users_remove(name: str) -> None:
    """Remove a user: its tokens stop working at once, not when they expire."""
    settings = load_settings()
    if not _users(settings).remove(name):
        raise fail(f"no user {name}")
    _audit_account_change(settings, name, "removed")
    console.print(f"user {name} removed")


@app.command("list")
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
    open_audit_log(settings).append(console_user_entry(AuditAction.ACCOUNT, f"User/{name}", detail))
