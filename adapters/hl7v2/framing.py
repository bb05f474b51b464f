"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2): a pure, incremental decoder.

A frame is ``<VT> payload <FS><CR>``. The decoder turns a byte stream, read in chunks of
any size, into ``Frame`` and ``BadFrame`` values. It never raises and its buffer is bounded,
so a hostile or broken peer cannot crash the gateway or exhaust its memory.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"

_VT = 0x0B
_FS = 0x1C

REASON_OUTSIDE_FRAME = "bytes outside a frame"
REASON_EMBEDDED_START = "start block inside an open frame"
REASON_TOO_LARGE = "frame too large"
REASON_CLOSED_MID_FRAME = "stream ended inside a frame"


def encode_frame(message: bytes) -> bytes:
    """Wrap one HL7 message in an MLLP block."""
    return START_BLOCK + message + END_BLOCK


@dataclass(frozen=True)
class Frame:
    """One complete MLLP block; ``payload`` is the HL7 message bytes, block characters removed."""

    payload: bytes


@dataclass(frozen=True)
class BadFrame:
    """Bytes the decoder refused; ``raw`` is kept (at most ``max_frame_bytes``) for quarantine."""

    raw: bytes
    reason: str


_IDLE = 0
_IN_FRAME = 1
_DISCARDING = 2


class MllpDecoder:
    """Incremental MLLP decoder for one connection.

    Decisions the gateway relies on:

    - Exactly one ``Frame`` or ``BadFrame`` is produced per end block the peer sends, so the
      gateway can answer every block once and the sender's ACK pairing stays in step.
    - A second start block inside an open frame taints the frame: it is returned whole as a
      ``BadFrame`` when its end block arrives (the corpus treats such a frame as refused).
    - A frame larger than ``max_frame_bytes`` yields one ``BadFrame`` ("frame too large") as
      soon as the limit is passed; the rest of it is discarded up to its end block.
    - Whitespace between frames (a CR/LF some senders add after the end block) is ignored;
      any other byte outside a frame is returned as a ``BadFrame`` when the next start block
      arrives, or when it reaches ``max_frame_bytes``.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self._max = max_frame_bytes
        self._buffer = bytearray()
        self._state = _IDLE
        self._tainted = False
        # Offset in the buffer already searched for block characters, so many small reads
        # of one large frame cost linear time, not quadratic.
        self._scanned = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes held for an incomplete frame (or stray bytes awaiting a start block)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        """Consume one read from the connection and return every block it completed."""
        out: list[Frame | BadFrame] = []
        self._buffer += data
        while self._step(out):
            pass
        return out

    def close(self) -> list[Frame | BadFrame]:
        """End of stream: whatever is buffered is an incomplete frame, returned for quarantine."""
        out: list[Frame | BadFrame] = []
        if self._state == _IN_FRAME:
            out.append(BadFrame(bytes(self._buffer[: self._max]), REASON_CLOSED_MID_FRAME))
        elif self._state == _IDLE and self._buffer.strip():
            out.append(BadFrame(bytes(self._buffer[: self._max]), REASON_OUTSIDE_FRAME))
        self._buffer.clear()
        self._reset(_IDLE)
        return out

    def _reset(self, state: int) -> None:
        self._state = state
        self._tainted = False
        self._scanned = 0
        if state != _DISCARDING:
            return
        # Keep a trailing FS: it may be the first half of the end block.
        keep = self._buffer[-1:] if self._buffer.endswith(b"\x1c") else b""
        self._buffer = bytearray(keep)

    def _step(self, out: list[Frame | BadFrame]) -> bool:
        """Advance the state machine once; return True when it should run again."""
        if self._state == _IDLE:
            return self._step_idle(out)
        if self._state == _IN_FRAME:
            return self._step_in_frame(out)
        return self._step_discarding()

    def _step_idle(self, out: list[Frame | BadFrame]) -> bool:
        start = self._buffer.find(START_BLOCK)
        if start == -1:
            if len(self._buffer) > self._max:
                if self._buffer.strip():
                    out.append(BadFrame(bytes(self._buffer[: self._max]), REASON_OUTSIDE_FRAME))
                self._buffer.clear()
            return False
        stray = self._buffer[:start]
        if stray.strip():
            out.append(BadFrame(bytes(stray[: self._max]), REASON_OUTSIDE_FRAME))
        del self._buffer[: start + 1]
        self._reset(_IN_FRAME)
        return True

    def _step_in_frame(self, out: list[Frame | BadFrame]) -> bool:
        # Search from one byte before the scanned mark: an FS may have ended the last read.
        search_from = max(self._scanned - 1, 0)
        end = self._buffer.find(END_BLOCK, search_from)
        scan_limit = len(self._buffer) if end == -1 else end
        if not self._tainted and self._buffer.find(START_BLOCK, search_from, scan_limit) != -1:
            self._tainted = True
        if end == -1:
            self._scanned = len(self._buffer)
            payload_at_least = len(self._buffer) - (1 if self._buffer.endswith(b"\x1c") else 0)
            if payload_at_least > self._max:
                out.append(BadFrame(bytes(self._buffer[: self._max]), REASON_TOO_LARGE))
                self._reset(_DISCARDING)
            return False
        payload = bytes(self._buffer[:end])
        del self._buffer[: end + len(END_BLOCK)]
        if len(payload) > self._max:
            out.append(BadFrame(payload[: self._max], REASON_TOO_LARGE))
        elif self._tainted:
            out.append(BadFrame(payload, REASON_EMBEDDED_START))
        else:
            out.append(Frame(payload))
        self._reset(_IDLE)
        return True

    def _step_discarding(self) -> bool:
        end = self._buffer.find(END_BLOCK)
        if end == -1:
            self._reset(_DISCARDING)
            return False
        del self._buffer[: end + len(END_BLOCK)]
        self._reset(_IDLE)
        return True
