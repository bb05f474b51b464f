"""Every patch a workflow with local activities asks through its RunPatches is one that
``all-patches-at-start`` stands for (workflows/patches.py); a patch added later and not
listed would be recorded where it is asked, possibly after a local activity."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest

from workflows.patches import PATCHES_AT_START

MODULES_ASKING_THROUGH_RUN_PATCHES = [
    "workflows.order_to_result",
    "workflows.discharge_sync",
    "workflows.imaging_order",
    "workflows.patient_merge",
    "workflows.patient_sync",
    "workflows.ordered_delivery",
    "workflows.exchange_search",
    "workflows.review",
]


WORKFLOWS_WITH_LOCAL_ACTIVITIES = MODULES_ASKING_THROUGH_RUN_PATCHES[:6]


def direct_patch_calls(module_name: str) -> list[int]:
    """Lines calling ``workflow.patched(...)`` itself, past the run's RunPatches."""
    module = importlib.import_module(module_name)
    return [
        node.lineno
        for node in ast.walk(ast.parse(inspect.getsource(module)))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "patched"
        and getattr(node.func.value, "id", "") == "workflow"
    ]


def asked_patches(module_name: str) -> set[str]:
    """The ids passed to ``self._patched(...)`` or a ``patched(...)`` parameter."""
    module = importlib.import_module(module_name)
    asked = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not isinstance(node, ast.Call) or len(node.args) != 1:
            continue
        callee = node.func
        name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
        if name not in ("_patched", "patched") or (
            isinstance(callee, ast.Attribute) and (getattr(callee.value, "id", "") == "workflow")
        ):
            continue
        [argument] = node.args
        if isinstance(argument, ast.Constant):
            asked.add(str(argument.value))
        elif isinstance(argument, ast.Name):
            asked.add(str(getattr(module, argument.id)))
    return asked


@pytest.mark.parametrize("module_name", MODULES_ASKING_THROUGH_RUN_PATCHES)
def test_every_patch_asked_through_run_patches_is_covered(module_name: str) -> None:
    assert asked_patches(module_name) <= PATCHES_AT_START


@pytest.mark.parametrize("module_name", WORKFLOWS_WITH_LOCAL_ACTIVITIES)
def test_workflows_with_local_activities_ask_every_patch_through_run_patches(
    module_name: str,
) -> None:
    assert direct_patch_calls(module_name) == []


def test_the_scan_finds_the_patches_it_checks() -> None:
    assert {"lab-writes-local-first", "lab-patient-mismatch-review"} <= asked_patches(
        "workflows.order_to_result"
    )
    assert "review-reason-attribute" in asked_patches("workflows.review")
    assert "delivery-local-first" in asked_patches("workflows.ordered_delivery")
    assert direct_patch_calls("workflows.destination_health")  # it has no local activities
