"""`careweave login`: a token from the API, kept for the commands that go through it."""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import httpx
import typer

from models.settings import load_settings
from workers.cli.common import console, fail, read_password, refusal_text

app = typer.Typer()


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
    password = read_password(password_stdin, confirm=False)
    try:
        answer = httpx.post(
            f"{settings.resolved_api_url}/auth/token",
            data={"grant_type": "password", "username": username, "password": password},
            timeout=60,
        )
    except httpx.TransportError as err:
        raise fail(f"cannot reach the API at {settings.resolved_api_url} ({err})") from err
    if not answer.is_success:
        raise fail(f"login {refusal_text(answer)}")
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
