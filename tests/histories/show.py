"""Read a recorded history the way a reviewer wants to: one line per event, payloads as JSON.

    python -m tests.histories.show tests/histories/order_to_result/order_result_correction.json
    python -m tests.histories.show --payloads FILE   # with every payload decoded from base64

The JSON files keep payload data base64-encoded (protobuf JSON for bytes), which is what
`WorkflowHistory.from_json` and the Temporal CLI read; the payloads are plain (decoded through
Careweave's codec when recorded), so this only has to undo the base64.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from tests.support.history import nested


def what(event: HistoryEvent) -> str:
    """The name that matters in the event: activity type, signal, update, marker, timer."""
    attributes_field = event.WhichOneof("attributes")
    if attributes_field is None:
        return ""
    attributes: Message = getattr(event, attributes_field)
    fields = attributes.DESCRIPTOR.fields_by_name
    for name in ("activity_type", "workflow_type"):
        if name in fields and attributes.HasField(name):
            return str(getattr(attributes, name).name)
    for name in ("signal_name", "marker_name", "timer_id"):
        if name in fields:
            return str(getattr(attributes, name))
    if event.HasField("workflow_execution_update_accepted_event_attributes"):
        return event.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
    return ""


def plain(payload: Payload) -> object:
    try:
        return json.loads(payload.data)
    except ValueError:
        return payload.data.decode(errors="replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.histories.show", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--payloads", action="store_true", help="print every payload as JSON")
    args = parser.parse_args(argv)
    for path in args.files:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        print(f"== {path}")
        for event in history.events:
            kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
            print(f"{event.event_id:>4} {kind:<45} {what(event)}")
            if args.payloads:
                for where, payload in nested(event, Payload):
                    print(f"       {where}: {json.dumps(plain(payload), ensure_ascii=False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
