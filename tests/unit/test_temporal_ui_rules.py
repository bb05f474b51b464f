"""Which of the Temporal UI's requests the API lets through (workers/api/temporal_ui.py):
the paths are the ones UI 2.54.1 was seen sending in Chromium, and the commands it offers."""

from __future__ import annotations

import pytest

from workers.api.temporal_ui import is_read_only

WORKFLOW = "/api/v1/namespaces/default/workflows/order-to-result%2FGENHOSP%2F1001"
RUN = f"{WORKFLOW}/runs/0190a5b2-0000-7000-8000-000000000001"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/namespaces/default/workflows"),
        ("GET", "/_app/immutable/entry/start.js"),
        ("GET", "/api/v1/settings"),
        ("GET", "/api/v1/cluster-info"),
        ("GET", "/api/v1/namespaces/default/search-attributes"),
        ("GET", f"{WORKFLOW}/history?waitNewEvent=true"),
        ("GET", "/api/v1/namespaces/default/task-queues/careweave?taskQueueType=1"),
        ("HEAD", "/namespaces/default/workflows"),
        # The Call Stack and Queries tabs, and the workflow's metadata.
        ("POST", f"{WORKFLOW}/query/__stack_trace"),
        ("POST", f"{WORKFLOW}/query/__temporal_workflow_metadata"),
        ("POST", f"{RUN}/query/status"),
    ],
)
def test_reads_pass(method: str, path: str) -> None:
    assert is_read_only(method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"{RUN}/terminate"),
        ("POST", f"{WORKFLOW}/terminate"),
        ("POST", f"{RUN}/cancel"),
        ("POST", f"{WORKFLOW}/signal/order_message"),
        ("POST", f"{WORKFLOW}/update/decide_review"),
        ("POST", f"{RUN}/reset"),
        ("POST", f"{WORKFLOW}/pause"),
        ("POST", "/api/v1/namespaces/default/workflows/new-one"),
        ("POST", "/api/v1/namespaces/default/batch-operations/job-1"),
        ("POST", "/api/v1/namespaces/default/schedules/nightly"),
        ("DELETE", "/api/v1/namespaces/default/schedules/nightly"),
        ("POST", "/api/v1/namespaces/default/update"),
        ("POST", "/api/v1/nexus/endpoints"),
        ("PUT", "/api/v1/settings"),
        # A query path that dot segments would turn into another route.
        ("POST", f"{WORKFLOW}/query/../terminate"),
        ("POST", f"{WORKFLOW}/../x/runs/r/query/q"),
        ("GET", "/api/v1/namespaces/default/%2E%2E/%2e%2e/settings"),
    ],
)
def test_commands_are_refused(method: str, path: str) -> None:
    assert not is_read_only(method, path)
