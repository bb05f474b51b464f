"""`careweave keys`: the payload encryption key ring (AES-256-GCM), rotated by adding a key."""

from __future__ import annotations

from typing import Annotated

import typer

from adapters.payload_crypto import PayloadKeyError, add_key
from models.settings import load_settings
from workers.cli.common import console, fail, load_key_ring
from workers.payload_codec import payload_key_file

app = typer.Typer(name="keys", help="Payload encryption keys (AES-256-GCM)", no_args_is_help=True)


@app.command("new")
def keys_new(
    key_id: Annotated[str | None, typer.Option(help="id for the new key (default k<time>)")] = None,
) -> None:
    """Add a key to the key file; it encrypts from the next start on, older keys still decrypt."""
    settings = load_settings()
    path = payload_key_file(settings)
    try:
        added = add_key(path, key_id)
    except PayloadKeyError as err:
        raise fail(str(err)) from err
    console.print(
        f"added payload key {added} to {path}; restart the worker, gateway and API to use it"
    )


@app.command("list")
def keys_list() -> None:
    """Key ids in the ring (never key material); the last one encrypts."""
    ring = load_key_ring(load_settings())
    for key_id in ring.key_ids:
        marker = "  (encrypts)" if key_id == ring.current_key_id else ""
        console.print(f"{key_id}{marker}", markup=False)
