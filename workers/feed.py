"""Reading files of HL7 v2 messages for `careweave send` and the demo."""

from __future__ import annotations

import re
from pathlib import Path

_MESSAGE_START = re.compile(rb"(?:^|[\r\n\x0b\x1c]+)(?=MSH\|)")
_BOUNDARY = b"\r\n\x0b\x1c"


def split_messages(data: bytes) -> list[bytes]:
    """Split a file holding several messages at each MSH segment; bytes otherwise untouched.

    Captured feeds often keep the MLLP block characters between messages, so those are
    trimmed at message boundaries along with line ends.
    """
    parts = [part.strip(_BOUNDARY) for part in _MESSAGE_START.split(data)]
    return [part + b"\r" for part in parts if part]


def read_feed_file(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SystemExit(f"{path}: cannot read ({err.strerror})") from err
    messages = split_messages(data)
    if not messages:
        raise SystemExit(f"{path}: line 1: no MSH segment, not an HL7 v2 message file")
    return messages
