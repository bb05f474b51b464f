"""Patch markers recorded in a run's first workflow task, before any local activity.

With temporalio 1.35, a patch marker that a workflow records after a local activity in the
same workflow task lands out of its place in the history when a query reaches the worker
while that activity runs; the next worker to replay the run then fails it with a
non-determinism error (tests/integration/test_queries_during_local_activities.py shows it).
Operators, the review inbox and the API query running exchanges at any time. A workflow
with local activities therefore asks, at the start of its run, for every patch it may ask
about later: new runs record them all there, and later calls are answered from the SDK's
memo without a command. Runs started before this marker existed replay as they were
recorded (``patches-up-front`` is false for them, so nothing is asked early).
"""

from __future__ import annotations

from temporalio import workflow

PATCHES_UP_FRONT = "patches-up-front"


def record_patches_up_front(*patch_ids: str) -> None:
    """Call first in ``run``, before the first local activity."""
    if workflow.patched(PATCHES_UP_FRONT):
        for patch_id in patch_ids:
            workflow.patched(patch_id)
