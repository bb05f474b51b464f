"""The replay test can fail: recorded histories replayed against deliberately altered copies of
today's workflows (same workflow type names) are refused with a non-determinism error, as a
worker running the altered code would refuse the running workflows they stand for.

No Temporal server and nothing of Temporal mocked: the Replayer runs the altered code against
the recorded events.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest
from temporalio.workflow import NondeterminismError

from tests.replay.altered_workflows import OrderToResultWithoutServiceRequest
from tests.replay.test_histories import HISTORIES, load, replayer
from workflows import discharge_sync, ordered_delivery

# The history of a discharge exchange's run started by a late A08 at commit 94ca0c2, before
# the recall existed: today's code replays it only because of workflow.patched(...).
PRE_PATCH_LATE_A08 = "discharge_sync/at_94ca0c2/late_a08_after_close.json"
BILLING_QUEUE = "ordered_delivery/discharge_a03_a08_a13_billing.json"

# (what changes, the workflow's module, its class, exact text -> replacement, history)
ALTERATIONS = {
    "discharge-recall-without-patch-guard": (
        discharge_sync,
        "DischargeSync",
        # The recall activity as commit 19e91b2 ran it: for every A08 without a discharge.
        [("            and self._patched(RECALL_CLOSED_PATCH)\n", "")],
        PRE_PATCH_LATE_A08,
    ),
    "delivery-activity-changed": (
        ordered_delivery,
        "OrderedDelivery",
        # MLLP destinations sent through the FHIR activity (one activity call changed).
        [('if self._state.kind == "fhir"', 'if self._state.kind == "mllp"')],
        BILLING_QUEUE,
    ),
}


def altered_copy(
    module: ModuleType,
    class_name: str,
    replacements: list[tuple[str, str]],
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> type:
    """A copy of ``module``'s source with ``replacements`` applied (each must match exactly
    once), its workflow class renamed but registered under the same workflow type name,
    importable by name (the sandbox re-imports it)."""
    source = Path(inspect.getfile(module)).read_text()
    renamed = f"Altered{class_name}"
    replacements = [
        (
            f"@workflow.defn\nclass {class_name}(",
            f'@workflow.defn(name="{class_name}")\nclass {renamed}(',
        ),
        *replacements,
    ]
    for old, new in replacements:
        assert source.count(old) == 1, (
            f"{module.__name__} no longer contains {old!r} exactly once: update this alteration"
        )
        source = source.replace(old, new)
    name = f"altered_{module.__name__.rsplit('.', 1)[-1]}_{folder.name}"
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    altered: type = getattr(importlib.import_module(name), renamed)
    return altered


@pytest.mark.parametrize("alteration", ALTERATIONS)
async def test_an_altered_copy_of_the_workflow_fails_replay(
    alteration: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, class_name, replacements, history = ALTERATIONS[alteration]
    altered = altered_copy(module, class_name, replacements, tmp_path, monkeypatch)
    with pytest.raises(NondeterminismError):
        await replayer([altered]).replay_workflow(load(HISTORIES / history))


@pytest.mark.parametrize("alteration", ALTERATIONS)
async def test_the_same_copy_unaltered_replays(
    alteration: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The failure above comes from the alteration, not from copying the module.
    module, class_name, _, history = ALTERATIONS[alteration]
    copy = altered_copy(module, class_name, [], tmp_path, monkeypatch)
    await replayer([copy]).replay_workflow(load(HISTORIES / history))


async def test_a_workflow_without_one_activity_call_fails_replay() -> None:
    history = load(HISTORIES / "order_to_result/order_result_correction.json")
    with pytest.raises(NondeterminismError) as refused:
        await replayer([OrderToResultWithoutServiceRequest]).replay_workflow(history)
    assert "Nondeterminism" in str(refused.value)
