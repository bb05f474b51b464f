"""One patch marker, at the start of a run, in place of every patch before it.

With temporalio 1.35, a patch marker that a workflow records after a local activity in the
same workflow task lands out of its place in the history when a query reaches the worker
while that activity runs; the next worker to replay the run then fails it with a
non-determinism error (tests/integration/test_queries_during_local_activities.py shows it).
Operators, the review inbox and the API query running exchanges at any time.

A workflow with local activities therefore asks, first thing in its run, for
``all-patches-at-start``. A run started on today's code records that one marker (and the
SDK's one search-attribute upsert for it) and answers every patch in ``PATCHES_AT_START``
true without a marker of its own, so nothing is recorded after a local activity and no
workflow task carries a dozen markers. A run started earlier does not have it, and asks
each patch where it always did, replaying as recorded. A patch added later is not in the
set: ask for it before the run's first local activity, or add a new marker of this kind.
The one exception: a workflow that takes RunPatches for the first time (none of its runs
has the marker yet) brings its own patches into the set in that change, as OrderedDelivery
did with its first local activities.
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio import workflow

ALL_PATCHES_AT_START = "all-patches-at-start"

# Every patch a workflow with local activities asked about when the marker came in.
PATCHES_AT_START = frozenset(
    {
        "search-attributes-coalesced",
        "exchange-status-attribute",
        "business-key-search-attributes",
        "review-reason-attribute",
        "lab-writes-local-first",
        "lab-mismatch-every-identifier",
        "lab-patient-mismatch-review",
        "discharge-local-routing",
        "recall-closed-discharge",
        "imaging-fulfillment-task",
        "imaging-unordered-study-approve",
        "merge-delivery",
        "merge-in-flight",
        # OrderedDelivery's, when it took RunPatches.
        "destination-health",
        "replay-pace-holds",
        "delivery-local-first",
    }
)

Patched = Callable[[str], bool]


class RunPatches:
    """``workflow.patched`` for one run; create it first thing in ``run``."""

    def __init__(self) -> None:
        self._all = workflow.patched(ALL_PATCHES_AT_START)

    def __call__(self, patch_id: str) -> bool:
        if self._all and patch_id in PATCHES_AT_START:
            return True
        return workflow.patched(patch_id)
