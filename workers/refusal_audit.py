"""Audit rows for what the worker refuses: payloads that are not Careweave's ciphertext, and
review decisions without a valid proof that they came through the API.

Both arrive from outside Careweave's processes (straight at the Temporal frontend), so the
row is written by the worker as a service; the claimed reviewer is named in the detail,
never trusted as the actor.
"""

from __future__ import annotations

import asyncio
import logging

from adapters.audit_log import AuditLog
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.review import ReviewDecision
from workers.audit_interceptor import WORKER_ACTOR

log = logging.getLogger("careweave.worker")

# Refused payloads remembered per worker so that replaying a history (a workflow evicted
# from the cache) does not write its row again; bounded against a flood.
_REMEMBERED = 10_000


class RefusalAudit:
    """One per worker: writes refusal rows into ``audit_log`` on the worker's event loop."""

    def __init__(self, audit_log: AuditLog, loop: asyncio.AbstractEventLoop) -> None:
        self._audit_log = audit_log
        self._loop = loop
        self._recorded: set[tuple[str | None, str]] = set()
        self._writing: set[asyncio.Task[None]] = set()

    async def payload_refused(self, workflow_id: str | None, digest: str, why: str) -> None:
        """Once per refused payload and exchange: a worker that replays the history after a
        restart finds the row it wrote before and adds none (the digest identifies the
        payload). Runs on the worker's loop (the codec's report_refusal)."""
        detail = f"payload refused, {why} (sha256 {digest})"
        key = (workflow_id, detail)
        if key in self._recorded:
            return
        if workflow_id is None or not await asyncio.to_thread(self._on_record, workflow_id, detail):
            await self._audit_log.aappend(
                AuditEntry(
                    actor_kind=ActorKind.SERVICE,
                    actor=WORKER_ACTOR,
                    action=AuditAction.DECODE,
                    outcome=AuditOutcome.REFUSED,
                    exchange=workflow_id,
                    resource="temporal-payload",
                    detail=detail,
                )
            )
        if len(self._recorded) >= _REMEMBERED:
            self._recorded.clear()
        self._recorded.add(key)

    def _on_record(self, workflow_id: str, detail: str) -> bool:
        return any(
            row.action == AuditAction.DECODE.value and row.detail == detail
            for row in self._audit_log.records(exchange=workflow_id)
        )

    def decision_refused(self, workflow_id: str, decision: ReviewDecision, why: str) -> None:
        """Called from a workflow thread (an update validator): the row is handed to the
        worker's loop, so the workflow task never waits for the database."""
        claimed = decision.reviewer[:60]
        entry = AuditEntry(
            actor_kind=ActorKind.SERVICE,
            actor=WORKER_ACTOR,
            action=AuditAction.REVIEW_DECISION,
            outcome=AuditOutcome.REFUSED,
            exchange=workflow_id,
            resource=f"review {decision.review_id[:50]}",
            detail=f"{decision.action.value} claimed by {claimed!r}: {why}"[:500],
        )
        self._loop.call_soon_threadsafe(self._start_writing, entry)

    def _start_writing(self, entry: AuditEntry) -> None:
        task = self._loop.create_task(self._write(entry))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, entry: AuditEntry) -> None:
        try:
            await self._audit_log.aappend(entry)
        except Exception:
            # The refusal itself stands (nothing entered the history); only its row is lost.
            log.exception("could not write the audit row of a refused review decision")

    async def drain(self) -> None:
        """Wait for the rows handed over so far (the worker is closing)."""
        while self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)
