"""Walking Temporal history events (protobuf) for what they hold."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TypeVar

from google.protobuf.message import Message
from temporalio.client import WorkflowHistory

Found = TypeVar("Found", bound=Message)


def nested(
    message: Message,
    kind: type[Found],
    *,
    skip_fields: frozenset[str] = frozenset(),
    path: str = "",
) -> Iterator[tuple[str, Found]]:
    """Every ``kind`` message inside ``message``, with its field path (and map key).

    The walk does not descend into a found message (a Failure's causes come with it).
    """
    for field, value in message.ListFields():
        if field.message_type is None or field.name in skip_fields:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [(f"{path}.{field.name}[{key}]", item) for key, item in value.items()]
        elif field.is_repeated:
            items = [(f"{path}.{field.name}", item) for item in value]
        else:
            items = [(f"{path}.{field.name}", value)]
        for item_path, item in items:
            if isinstance(item, kind):
                yield item_path, item
            elif isinstance(item, Message):
                yield from nested(item, kind, skip_fields=skip_fields, path=item_path)


def local_attempts(history: WorkflowHistory, activity_type: str) -> list[tuple[int, bool]]:
    """(attempt, failed) of each recorded local activity of that type, in order."""
    found = []
    for event in history.events:
        marker = event.marker_recorded_event_attributes
        if marker.marker_name != "core_local_activity":
            continue
        data = json.loads(marker.details["data"].payloads[0].data)
        if data["activity_type"] == activity_type:
            found.append((int(data["attempt"]), marker.HasField("failure")))
    return found
