"""The ACK path: decide, commit to Temporal, then answer. Shared by the MLLP
gateway and `careweave quarantine release`, so a released message takes the
same road as a fresh one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from opentelemetry import propagate, trace

from adapters.database import CareweaveStore
from adapters.grouping import GroupRunner
from adapters.hl7v2.ack import ack_required, build_ack
from adapters.hl7v2.header import DecodedMessage, MessageHeader, MessageRejected, decode_message
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS, CommitError, ExchangeRegistry, Route
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.messages import InboundMessage
from models.records import MessageReceipt, QuarantinedMessage

log = logging.getLogger("careweave.intake")
tracer = trace.get_tracer("careweave.gateway")


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    NOT_COMMITTED = "not-committed"


@dataclass(frozen=True)
class IntakeResult:
    outcome: Outcome
    ack_code: str
    ack: str | None
    workflow_id: str | None = None
    quarantine_id: int | None = None
    reason: str = ""
    # MSH-9 as the sender wrote it ("" when there was no readable header): for metrics,
    # which label only the types the registry accepts.
    message_type: str = ""


class Committer(Protocol):
    """Durably hands a message to its exchange (Temporal signal-with-start)."""

    async def commit(self, route: Route[Any], message: InboundMessage) -> str:
        """Returns the id of the workflow that took the message (the route's, or its
        legacy id while a run under that id is open)."""
        ...


__all__ = ["CommitError", "Committer", "IntakeResult", "MessageIntake", "Outcome"]


def _now_hl7() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def receive_entry(
    header: MessageHeader | None,
    *,
    peer: str,
    ack_code: str,
    detail: str,
    exchange: str | None = None,
) -> AuditEntry:
    """The RECEIVE row of one message: the sender is MSH-3^MSH-4 (system names, not
    patient data), else the network peer; the resource is MSH-9 and MSH-10."""
    if header is not None:
        actor = f"{header.sending_application}^{header.sending_facility}"
        resource: str | None = f"{header.message_type} {header.control_id}"
    else:
        actor, resource = f"peer {peer}", None
    return AuditEntry(
        actor_kind=ActorKind.PARTNER,
        # A sender chooses these lengths; the trail keeps a bounded prefix.
        actor=actor[:200],
        action=AuditAction.RECEIVE,
        outcome=AuditOutcome.SUCCESS if ack_code == "AA" else AuditOutcome.REFUSED,
        exchange=exchange,
        resource=resource[:300] if resource else None,
        detail=f"{ack_code} {detail}".strip()[:500],
    )


class MessageIntake:
    def __init__(
        self,
        store: CareweaveStore,
        committer: Committer | None,
        *,
        fallback_charset: str | None = None,
        pseudonym_key: bytes = b"",
        registry: ExchangeRegistry = REGISTRY,
    ) -> None:
        # committer None = parse + ACK only (bench/ingest.py's floor); never in production.
        self._registry = registry
        self._supported_types = registry.supported_types
        self._required_segments = registry.required_segments
        self._store = store
        self._committer = committer
        self._fallback_charset = fallback_charset
        self._pseudonym_key = pseudonym_key
        # SQLite answers a receipt in ~0.1 ms, less than a hop to a thread costs, so it
        # runs on the loop; a networked database runs in a thread, a burst per round trip.
        self._receipts = store.receipt_book()
        inline = store.is_sqlite
        self._receipt_lookups = GroupRunner[tuple[str, str], str | None](
            self._receipts.workflow_ids_for, inline=inline
        )
        # A receipt and its RECEIVE audit row go in the same transaction: no extra commit.
        self._receipt_writes = GroupRunner[tuple[MessageReceipt | None, AuditEntry], None](
            self._write_receipts, inline=inline
        )

    def _write_receipts(self, items: list[tuple[MessageReceipt | None, AuditEntry]]) -> list[None]:
        self._receipts.record(
            [receipt for receipt, _ in items if receipt is not None],
            [entry for _, entry in items],
        )
        return [None] * len(items)

    async def accept(self, payload: bytes, *, peer: str, quarantine: bool = True) -> IntakeResult:
        """Decide, commit, answer. quarantine=False when re-checking an already kept message."""
        with tracer.start_as_current_span("mllp.receive") as span:
            result = await self._accept(payload, peer=peer, quarantine=quarantine)
            span.set_attribute("careweave.outcome", result.outcome.value)
            span.set_attribute("hl7.ack_code", result.ack_code)
            if result.workflow_id:
                span.set_attribute("temporal.workflow_id", result.workflow_id)
            return result

    async def _accept(self, payload: bytes, *, peer: str, quarantine: bool) -> IntakeResult:
        try:
            message = decode_message(
                payload,
                supported_types=self._supported_types,
                supported_versions=SUPPORTED_VERSIONS,
                fallback_charset=self._fallback_charset,
                required_segments=self._required_segments,
            )
            destination = self._registry.route(message, pseudonym_key=self._pseudonym_key)
        except MessageRejected as rejection:
            return await self._reject(payload, rejection, peer=peer, quarantine=quarantine)
        header = message.header
        trace.get_current_span().set_attribute("hl7.message_type", header.message_type)

        earlier = await self._receipt_lookups.submit((header.sending_facility, header.control_id))
        if earlier is not None:
            log.info("duplicate %s control id acknowledged again", header.message_type)
            await self._receipt_writes.submit(
                (
                    None,
                    receive_entry(
                        header, peer=peer, ack_code="AA", detail="duplicate", exchange=earlier
                    ),
                )
            )
            return self._answer(header, "AA", Outcome.DUPLICATE, earlier)

        if self._committer is not None:
            try:
                workflow_id = await self._committer.commit(
                    destination, inbound_message(message, destination)
                )
            except CommitError as err:
                # Not durable means no AA: the sender keeps the message and resends;
                # the bytes are kept too, so an operator can release them.
                not_durable = MessageRejected(
                    ack_code="AE",
                    error_code="207",
                    segment_id="MSH",
                    segment_sequence=1,
                    field_position=None,
                    text=f"the engine could not accept the message now ({err}); resend later",
                    header=header,
                )
                return await self._reject(
                    payload,
                    not_durable,
                    peer=peer,
                    quarantine=quarantine,
                    outcome=Outcome.NOT_COMMITTED,
                )
            receipt = MessageReceipt(
                sending_facility=header.sending_facility,
                control_id=header.control_id,
                workflow_id=workflow_id,
                message_type=header.message_type,
                received_at=datetime.now(UTC),
            )
            entry = receive_entry(header, peer=peer, ack_code="AA", detail="", exchange=workflow_id)
            await self._receipt_writes.submit((receipt, entry))
            return self._answer(header, "AA", Outcome.ACCEPTED, workflow_id)
        return self._answer(header, "AA", Outcome.ACCEPTED, destination.workflow_id)

    async def refuse(
        self, payload: bytes, rejection: MessageRejected, *, peer: str
    ) -> IntakeResult:
        """Keep a message another reader refused (a batch file's bad message) the way the
        gateway keeps its own refusals: quarantined with the reason and a RECEIVE row."""
        return await self._reject(payload, rejection, peer=peer)

    async def reject_frame(self, raw: bytes, reason: str, *, peer: str) -> IntakeResult:
        """A frame the MLLP decoder refused (too large, embedded start byte, stray bytes)."""
        rejection = MessageRejected(
            ack_code="AR",
            error_code="100",
            segment_id="MSH",
            segment_sequence=1,
            field_position=None,
            text=f"MLLP frame refused: {reason}",
            header=None,
        )
        return await self._reject(raw, rejection, peer=peer)

    async def _reject(
        self,
        payload: bytes,
        rejection: MessageRejected,
        *,
        peer: str,
        quarantine: bool = True,
        outcome: Outcome = Outcome.REJECTED,
    ) -> IntakeResult:
        header = rejection.header
        message_type = header.message_type if header else ""
        if not quarantine:
            return IntakeResult(
                outcome=outcome,
                ack_code=rejection.ack_code,
                ack=None,
                reason=rejection.text,
                message_type=message_type,
            )
        quarantine_id = await asyncio.to_thread(
            self._store.quarantine,
            QuarantinedMessage(
                received_at=datetime.now(UTC),
                peer=peer,
                ack_code=rejection.ack_code,
                error_code=rejection.error_code,
                reason=rejection.text,
                message_type=header.message_type if header else "",
                control_id=header.control_id if header else "",
                raw=payload,
            ),
            audit=receive_entry(
                header,
                peer=peer,
                ack_code=rejection.ack_code,
                detail=f"{rejection.error_code} quarantined",
            ),
        )
        log.warning(
            "message quarantined as #%d: %s %s (%s)",
            quarantine_id,
            rejection.ack_code,
            rejection.error_code,
            rejection.text,
        )
        ack: str | None = build_ack(
            header,
            rejection.ack_code,
            rejection=rejection,
            ack_control_id=uuid.uuid4().hex[:20],
            timestamp=_now_hl7(),
        )
        if header is not None and not ack_required(header, rejection.ack_code):
            ack = None
        return IntakeResult(
            outcome=outcome,
            ack_code=rejection.ack_code,
            ack=ack,
            quarantine_id=quarantine_id,
            reason=rejection.text,
            message_type=message_type,
        )

    def _answer(
        self, header: MessageHeader, ack_code: str, outcome: Outcome, workflow_id: str
    ) -> IntakeResult:
        ack: str | None = build_ack(
            header, ack_code, ack_control_id=uuid.uuid4().hex[:20], timestamp=_now_hl7()
        )
        if not ack_required(header, ack_code):
            ack = None
        return IntakeResult(
            outcome=outcome,
            ack_code=ack_code,
            ack=ack,
            workflow_id=workflow_id,
            message_type=header.message_type,
        )


def _current_trace_context() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def inbound_message(message: DecodedMessage, route: Route[Any]) -> InboundMessage:
    """What travels in the exchange's signal: the decoded message, its header codes, the
    receive span's trace context and the route's business-key pseudonyms."""
    header = message.header
    return InboundMessage(
        text=message.text,
        message_type=header.message_type,
        control_id=header.control_id,
        sending_facility=header.sending_facility,
        received_at=datetime.now(UTC),
        normalizations=tuple(message.normalizations),
        trace_context=_current_trace_context(),
        business_keys=route.business_keys,
    )
