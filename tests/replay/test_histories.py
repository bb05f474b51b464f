"""Every recorded history (tests/histories/**/*.json) replays against today's workflow code.

A running workflow is continued by whichever worker picks it up next, which first replays its
history with the code it has. A change that makes the code issue other commands than the
history holds (an activity added, removed or moved, a timer, a signal handled differently)
fails that workflow with a non-determinism error in production. The Replayer does the same
check locally, without a server: a new JSON file is covered as soon as it is in the folder.

The histories were recorded with their payloads decoded (tests/histories/record.py), so they
replay with Careweave's data converter minus the encryption codec.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import Replayer

from exchanges.registry import REGISTRY
from exchanges.sdk import workflow_type_name
from tests.support.history import nested
from workers.payload_codec import ENCODING, METADATA_ENCODING, plain_data_converter

HISTORIES = Path(__file__).resolve().parents[1] / "histories"


def workflows_to_replay() -> list[type]:
    """The workflow classes a worker runs today (the exchange registry's): the one list this
    module replays against."""
    return REGISTRY.workflows()


def recorded_histories() -> list[Path]:
    return sorted(HISTORIES.rglob("*.json"))


def load(path: Path) -> WorkflowHistory:
    # The workflow id is not in the JSON; the file's place names the history instead.
    return WorkflowHistory.from_json(str(path.relative_to(HISTORIES)), path.read_text())


def replayer(workflows: list[type] | None = None) -> Replayer:
    """A Replayer configured as the worker is, for what affects replay: its workflows, the
    payload converter of Careweave's data converter (without the codec) and the workflow
    interceptor the worker gets from its client (tracing, see workers/temporal_client.py)."""
    return Replayer(
        workflows=workflows or workflows_to_replay(),
        data_converter=plain_data_converter(),
        interceptors=[TracingInterceptor()],
    )


def workflow_type(history: WorkflowHistory) -> str:
    return history.events[0].workflow_execution_started_event_attributes.workflow_type.name


def test_there_are_recorded_histories() -> None:
    assert recorded_histories(), f"no recorded histories under {HISTORIES}"


@pytest.mark.parametrize(
    "path", recorded_histories(), ids=lambda path: str(path.relative_to(HISTORIES))
)
async def test_recorded_history_replays_against_todays_code(path: Path) -> None:
    history = load(path)
    sealed = [
        where
        for event in history.events
        for where, payload in nested(event, Payload)
        if payload.metadata.get(METADATA_ENCODING) == ENCODING
    ]
    assert not sealed, (
        f"{path.name} holds encrypted payloads ({len(sealed)}); record it with "
        "python -m tests.histories.record, which decodes them"
    )
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, (
        f"{path.relative_to(HISTORIES)} ({workflow_type(history)}) no longer replays: "
        f"{result.replay_failure}. Running workflows with this history would fail the same way: "
        "keep the old behaviour for them (workflow.patched) instead of re-recording."
    )


def test_every_workflow_the_worker_runs_is_replayed_and_has_histories() -> None:
    recorded = {workflow_type(load(path)) for path in recorded_histories()}
    # The type name the history carries: the class name unless @workflow.defn(name=...) says.
    names = {workflow_type_name(cls) for cls in workflows_to_replay()}
    assert names - recorded == set(), "workflows without a recorded history"
