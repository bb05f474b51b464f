"""`careweave review`: exchanges waiting for a person, decided through the API as the
logged-in user (`careweave login`), so every decision names a verified reviewer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.table import Table

from models.review import ReviewAction, ReviewRecord, ReviewRequest
from models.settings import load_settings
from workers.cli.common import api_call, console, fail

app = typer.Typer(name="review", help="Exchanges waiting for a person", no_args_is_help=True)

ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the history)")]


@app.command("list")
def review_list() -> None:
    """Exchanges with a pending review (ReviewState = 'pending')."""
    settings = load_settings()
    listed = api_call(settings, "GET", "/reviews")
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
    if listed.get("unreadable"):
        console.print(
            f"{len(listed['unreadable'])} more exchange(s) marked pending could not be read "
            "(their worker did not answer): " + ", ".join(listed["unreadable"])
        )


def _decide(
    workflow_id: str, action: ReviewAction, reason: str, *, edited_message: str | None = None
) -> None:
    settings = load_settings()
    path = f"/reviews/{quote(workflow_id, safe='/')}"
    pending = api_call(settings, "GET", path)["review"]
    if pending is None:
        raise fail(f"{workflow_id} has no pending review")
    review_id = ReviewRequest.model_validate(pending).review_id
    body = {"review_id": review_id, "action": action.value, "reason": reason}
    if edited_message is not None:
        body["edited_message"] = edited_message
    record = ReviewRecord.model_validate(api_call(settings, "POST", f"{path}/decision", json=body))
    console.print(
        f"{action.value} recorded for {workflow_id} ({review_id}) by {record.decision.reviewer}"
    )


@app.command("approve")
def review_approve(workflow_id: str, reason: ReasonOption) -> None:
    """Approve the pending review of an exchange."""
    _decide(workflow_id, ReviewAction.APPROVE, reason)


@app.command("reject")
def review_reject(workflow_id: str, reason: ReasonOption) -> None:
    """Reject the pending review of an exchange."""
    _decide(workflow_id, ReviewAction.REJECT, reason)


@app.command("retry")
def review_retry(workflow_id: str, reason: ReasonOption) -> None:
    """Ask the exchange to retry the step under review."""
    _decide(workflow_id, ReviewAction.RETRY, reason)


@app.command("skip")
def review_skip(workflow_id: str, reason: ReasonOption) -> None:
    """Let an ordered-delivery queue move on without the event under review."""
    _decide(workflow_id, ReviewAction.SKIP, reason)


@app.command("edit")
def review_edit(
    workflow_id: str,
    message_file: Annotated[Path, typer.Option("--message", help="The corrected HL7 v2 message")],
    reason: ReasonOption,
) -> None:
    """Send a corrected message in place of the one a destination refused."""
    from workers.feed import read_feed_file

    messages = read_feed_file(message_file)
    if len(messages) != 1:
        raise fail(f"{message_file}: holds {len(messages)} messages; an edit is exactly one")
    _decide(
        workflow_id,
        ReviewAction.EDIT,
        reason,
        edited_message=messages[0].decode("utf-8", errors="strict"),
    )
