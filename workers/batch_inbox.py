"""A watched inbox folder for upstream batch files: each file is taken once it has stopped
growing, ingested, and moved aside (processed/, held/ or failed/). Nothing is deleted.

A sender copying a file into the folder changes its size and modification time; a file
whose two stay the same for ``settle_seconds`` (two scans at least) is complete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

log = logging.getLogger("careweave.batch.inbox")


class InboxVerdict(StrEnum):
    PROCESSED = "processed"  # applied (bad messages are in quarantine)
    HELD = "held"  # a trailer count does not add up: waiting for an operator
    FAILED = "failed"  # unreadable, or no HL7 in it
    RETRY = "retry"  # the engine could not take it now: left in the inbox, tried again


def move_aside(path: Path, verdict: InboxVerdict) -> Path:
    """Move ``path`` into the inbox's folder for ``verdict``, never over another file."""
    folder = path.parent / verdict.value
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = folder / f"{path.stem}.{stamp}{path.suffix}"
        counter = 1
        while target.exists():
            target = folder / f"{path.stem}.{stamp}-{counter}{path.suffix}"
            counter += 1
    path.rename(target)
    return target


class BatchInbox:
    def __init__(
        self,
        folder: Path,
        ingest: Callable[[Path], Awaitable[InboxVerdict]],
        *,
        poll_seconds: float,
        settle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._folder = folder
        self._ingest = ingest
        self._poll_seconds = poll_seconds
        self._settle_seconds = settle_seconds
        self._clock = clock
        # path -> (size, mtime_ns) last seen, and since when it has not changed
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Scan until ``stop`` is set."""
        while not stop.is_set():
            await self.scan()
            try:
                await asyncio.wait_for(stop.wait(), self._poll_seconds)
            except TimeoutError:
                pass

    async def scan(self) -> list[tuple[Path, InboxVerdict, Path | None]]:
        """One pass: ingest every complete file; (file, verdict, where it went) for each."""
        now = self._clock()
        present: set[Path] = set()
        done: list[tuple[Path, InboxVerdict, Path | None]] = []
        for path in sorted(self._folder.iterdir()):
            # Sub-folders are where files go; a dot file is a sender's partial copy.
            if not path.is_file() or path.name.startswith("."):
                continue
            present.add(path)
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            seen = self._seen.get(path)
            if seen is None or seen[0] != signature:
                self._seen[path] = (signature, now)
                continue
            if now - seen[1] < self._settle_seconds:
                continue
            verdict = await self._ingest(path)
            if verdict is InboxVerdict.RETRY:
                done.append((path, verdict, None))
                continue
            moved = move_aside(path, verdict)
            del self._seen[path]
            present.discard(path)
            log.info("batch file moved to %s/", verdict.value)
            done.append((path, verdict, moved))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return done
