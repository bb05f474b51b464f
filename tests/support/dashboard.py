"""Where the operations docs keep their PromQL: the Grafana dashboard's panel targets and the
Prometheus alerting rules, read from the docs themselves (the single source)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
ALERT_RULES = DOCS / "prometheus-alerts.yml"
OPERATIONS = DOCS / "operations.md"
# Metric names in PromQL: every series the docs query is Careweave's or Temporal's.
METRIC_NAME = re.compile(r"\b(?:careweave|temporal)_[a-z0-9_]+\b")


def dashboard_exprs(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, rows' nested panels included."""
    if dashboard is None:
        dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], target["expr"]) for target in inner.get("targets", [])]
    return found


def alert_names() -> list[str]:
    """The ``alert:`` names of the rules file, in its order (Prometheus parses the rest)."""
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", ALERT_RULES.read_text(), re.MULTILINE)
