"""`careweave`: run the embedded stack, inspect quarantine, decide reviews, send test feeds.

One module per command group, each holding its Typer as `app`: a named one is a group
(`careweave quarantine ...`), an unnamed one adds its commands at the top level. A new
group is a module here and one `app.add_typer(...)` line below; shared helpers live in
`common.py`.
"""

from __future__ import annotations

import typer

from workers.cli import (
    audit,
    destination,
    exchanges,
    find,
    ingest_batch,
    keys,
    login,
    merge,
    processes,
    quarantine,
    review,
    send,
    users,
    validate,
)

app = typer.Typer(help="Careweave clinical integration engine", no_args_is_help=True)
app.add_typer(processes.app)  # up, worker, gateway, api, demo
app.add_typer(send.app)
app.add_typer(login.app)
app.add_typer(quarantine.app)
app.add_typer(review.app)
app.add_typer(audit.app)
app.add_typer(keys.app)
app.add_typer(users.app)
app.add_typer(exchanges.app)
app.add_typer(find.app)  # find
app.add_typer(validate.app)  # validate
app.add_typer(ingest_batch.app)  # ingest-batch
app.add_typer(destination.app)
app.add_typer(merge.app)

__all__ = ["app"]
