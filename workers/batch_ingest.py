"""Ingesting an upstream batch file (EHR downtime) through the same intake as live MLLP.

The file is read and judged first (adapters.hl7v2.batch_file). A trailer count that does
not add up holds the whole file: nothing is applied until an operator accepts it. Then
the bad messages are quarantined with their file and line, and the good ones go through
``MessageIntake.accept`` one at a time in clinical order, at a set rate: the same
validation, receipts and dedup (sending facility + MSH-10) as a message on the wire.
Progress is written after every message (adapters.batch_ledger), so a run stopped in the
middle continues at the next message, and the receipts answer for the one in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from functools import partial
from pathlib import Path

from adapters.database import CareweaveStore
from adapters.hl7v2.batch_file import BadMessage, BatchFile, BatchMessage, read_batch_file
from adapters.hl7v2.header import decode_message
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS, ExchangeRegistry
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.errors import EngineError
from models.records import BatchIngestion, BatchStatus
from workers.intake import MessageIntake, Outcome

log = logging.getLogger("careweave.batch")


class StepOutcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"  # received before this batch began (live, or another file)
    ALREADY_APPLIED = "already applied"  # by an earlier run of this same file
    QUARANTINED = "quarantined"
    ALREADY_QUARANTINED = "already quarantined"  # by an earlier run of this same file


class EngineUnavailable(EngineError):
    """Temporal could not take a message: the run stops there, and continues when run again."""


@dataclass(frozen=True)
class BatchPlan:
    """A read file and the order its messages are taken in."""

    path: Path
    digest: str  # SHA-256 of the file's bytes
    batch: BatchFile
    steps: tuple[BatchMessage | BadMessage, ...]  # bad ones (file order), then clinical order

    @property
    def held(self) -> bool:
        return bool(self.batch.trailer_problems)

    @property
    def order_digest(self) -> str:
        lines = ",".join(str(step.line) for step in self.steps)
        return hashlib.sha256(lines.encode()).hexdigest()

    def origin(self, step: BatchMessage | BadMessage) -> str:
        """Where a message came from, as quarantine rows and receipts name a peer."""
        return f"batch {self.path.name}:{step.line}"


@dataclass
class BatchReport:
    plan: BatchPlan
    held: bool = False
    outcomes: Counter[tuple[str, StepOutcome]] = field(default_factory=Counter)
    ledger: BatchIngestion | None = None

    def count(self, outcome: StepOutcome) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o is outcome)

    @property
    def message_types(self) -> list[str]:
        return sorted({message_type for message_type, _ in self.outcomes})


def plan_batch(
    path: Path,
    data: bytes,
    *,
    local_zone: tzinfo,
    registry: ExchangeRegistry = REGISTRY,
    fallback_charset: str | None = None,
) -> BatchPlan:
    batch = read_batch_file(
        data,
        decode=partial(
            decode_message,
            supported_types=registry.supported_types,
            supported_versions=SUPPORTED_VERSIONS,
            fallback_charset=fallback_charset,
            required_segments=registry.required_segments,
        ),
        local_zone=local_zone,
    )
    steps: tuple[BatchMessage | BadMessage, ...] = (
        *batch.bad_messages,
        *batch.in_clinical_order(),
    )
    return BatchPlan(path, hashlib.sha256(data).hexdigest(), batch, steps)


def _naive_utc(moment: datetime) -> datetime:
    # SQLite hands times back naive (they were written as UTC).
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


class BatchIngest:
    """Applies planned batch files through one intake, at ``rate_per_second``."""

    def __init__(
        self, store: CareweaveStore, intake: MessageIntake, *, rate_per_second: float
    ) -> None:
        self._store = store
        self._intake = intake
        self._interval = 1.0 / rate_per_second
        self._ledger = store.batch_ledger()

    async def ingest(
        self,
        plan: BatchPlan,
        *,
        operator: str,
        accept_trailer_mismatch: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ) -> BatchReport:
        """Apply the file, or hold it when its trailers do not add up and nobody accepted
        that. ``on_step(done, total)`` follows progress. Raises EngineUnavailable when
        Temporal cannot take a message (progress so far is kept)."""
        report = BatchReport(plan)
        known = await asyncio.to_thread(self._ledger.get, plan.digest)
        accepted_before = known is not None and known.trailer_mismatch_accepted_by is not None
        if plan.held and not accept_trailer_mismatch and not accepted_before:
            report.held = True
            report.ledger = await asyncio.to_thread(
                self._ledger.hold,
                plan.digest,
                file_name=plan.path.name,
                steps=len(plan.steps),
                order_digest=plan.order_digest,
            )
            log.warning(
                "batch file %s held: %d trailer problem(s)",
                plan.digest[:12],
                len(plan.batch.trailer_problems),
            )
            return report
        accepting_now = plan.held and not accepted_before
        row = await asyncio.to_thread(
            self._ledger.start,
            plan.digest,
            file_name=plan.path.name,
            steps=len(plan.steps),
            order_digest=plan.order_digest,
            accepted_by=operator if accepting_now else None,
        )
        if accepting_now:
            await self._store.audit_log().aappend(self._acceptance_entry(plan, operator))
        report.ledger = row
        assert row.applying_since is not None
        batch_began = _naive_utc(row.applying_since)
        done = row.applied if row.status != BatchStatus.DONE.value else len(plan.steps)
        for step in plan.steps[:done]:
            already = (
                StepOutcome.ALREADY_QUARANTINED
                if isinstance(step, BadMessage)
                else StepOutcome.ALREADY_APPLIED
            )
            report.outcomes[(step.message_type or "?", already)] += 1
        if on_step:
            on_step(done, len(plan.steps))
        log.info(
            "batch file %s: %d of %d steps done before", plan.digest[:12], done, len(plan.steps)
        )

        accepted_now: set[tuple[str, str]] = set()
        loop = asyncio.get_running_loop()
        next_commit = loop.time()
        for index in range(done, len(plan.steps)):
            step = plan.steps[index]
            if isinstance(step, BadMessage):
                await self._intake.refuse(step.raw, step.rejection, peer=plan.origin(step))
                outcome = StepOutcome.QUARANTINED
            else:
                # A steady pace, not bursts: a recovering engine and its destinations
                # take the backlog at the rate the operator chose.
                await asyncio.sleep(max(0.0, next_commit - loop.time()))
                next_commit = max(next_commit, loop.time()) + self._interval
                outcome = await self._apply(step, plan, batch_began, accepted_now)
            report.outcomes[(step.message_type or "?", outcome)] += 1
            await asyncio.to_thread(self._ledger.advance, plan.digest, index + 1)
            if on_step:
                on_step(index + 1, len(plan.steps))
        report.ledger = await asyncio.to_thread(self._ledger.get, plan.digest)
        return report

    async def _apply(
        self,
        message: BatchMessage,
        plan: BatchPlan,
        batch_began: datetime,
        accepted_now: set[tuple[str, str]],
    ) -> StepOutcome:
        header = message.decoded.header
        key = (header.sending_facility, header.control_id)
        origin = plan.origin(message)
        result = await self._intake.accept(message.raw, peer=origin, quarantine=False)
        if result.outcome is Outcome.NOT_COMMITTED:
            raise EngineUnavailable(
                f"{origin}: the engine could not accept the message now ({result.reason})"
            )
        if result.outcome is Outcome.REJECTED:
            # Refused after decoding (routing: e.g. no order number): kept the gateway's way.
            await self._intake.accept(message.raw, peer=origin)
            return StepOutcome.QUARANTINED
        if result.outcome is Outcome.ACCEPTED:
            accepted_now.add(key)
            return StepOutcome.ACCEPTED
        receipt = await asyncio.to_thread(self._store.receipt, *key)
        if (
            key not in accepted_now
            and receipt is not None
            and _naive_utc(receipt.received_at) >= batch_began
        ):
            # Received since this file began to be applied, and not in this run: an
            # earlier run of this file committed it and stopped before recording it.
            return StepOutcome.ALREADY_APPLIED
        return StepOutcome.DUPLICATE

    @staticmethod
    def _acceptance_entry(plan: BatchPlan, operator: str) -> AuditEntry:
        problems = "; ".join(f"line {p.line}: {p.text}" for p in plan.batch.trailer_problems)
        return AuditEntry(
            actor_kind=ActorKind.USER,
            actor=operator[:200],
            action=AuditAction.RELEASE,
            outcome=AuditOutcome.SUCCESS,
            resource=f"BatchFile/{plan.digest[:32]}",
            detail=f"trailer mismatch accepted: {problems}"[:500],
        )


def read_and_plan(
    path: Path,
    *,
    local_zone: tzinfo,
    registry: ExchangeRegistry = REGISTRY,
    fallback_charset: str | None = None,
) -> BatchPlan:
    """Raises OSError when the file cannot be read."""
    return plan_batch(
        path,
        path.read_bytes(),
        local_zone=local_zone,
        registry=registry,
        fallback_charset=fallback_charset,
    )
