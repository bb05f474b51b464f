"""`careweave exchanges`: what this Careweave exchanges, read from the registry."""

from __future__ import annotations

import typer
from rich.table import Table

from exchanges.registry import REGISTRY
from exchanges.sdk import activity_name, signal_name, update_name, workflow_type_name
from workers.cli.common import console

app = typer.Typer()


@app.command("exchanges")
def exchanges() -> None:
    """Every registered exchange: the messages it accepts (with the segments they need), its
    workflow and signals, its mapping versions and the search attributes it sets."""
    table = Table(title="Registered exchanges", show_lines=True)
    for column in (
        "exchange",
        "messages (required segments)",
        "workflow",
        "mappings",
        "search attributes",
    ):
        table.add_column(column)
    for spec in REGISTRY.exchanges:
        messages = "\n".join(
            f"{name} ({', '.join(message_type.required_segments) or '-'})"
            for message_type in spec.accepts
            for name in message_type.names()
        )
        handlers = [signal_name(s) for s in spec.signals] + [update_name(u) for u in spec.updates]
        versions = ", ".join(
            f"{v} (new exchanges)" if v == spec.mapping_version else v
            for v in spec.mapping_versions()
        )
        table.add_row(
            spec.name,
            messages,
            f"{workflow_type_name(spec.workflow)}\n" + "\n".join(f"  {h}" for h in handlers),
            versions,
            ", ".join(key.name for key in spec.search_attributes),
        )
    console.print(table)
    steps = Table(title="Shared steps")
    for column in ("step", "workflows", "activities", "search attributes"):
        steps.add_column(column)
    for step in REGISTRY.shared_steps:
        steps.add_row(
            step.name,
            ", ".join(workflow_type_name(w) for w in step.workflows),
            ", ".join(activity_name(fn) for fn in step.audit_actions),
            ", ".join(key.name for key in step.search_attributes),
        )
    console.print(steps)
