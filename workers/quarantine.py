"""Releasing a quarantined message: resubmit it, as kept or as fixed, through the same intake.

Every attempt leaves a RELEASE audit row with the operator: success in the same
transaction that marks the message released, a refusal with the reason's first words.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.database import CareweaveStore
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.errors import RequestRefused
from models.records import QuarantineStatus
from workers.intake import MessageIntake, Outcome


class ReleaseRefused(RequestRefused):
    """The message stays in quarantine; the text says why."""


@dataclass(frozen=True)
class Released:
    message_id: int
    outcome: Outcome
    workflow_id: str


def _release_entry(
    message_id: int,
    released_by: str,
    outcome: AuditOutcome,
    detail: str,
    exchange: str | None = None,
) -> AuditEntry:
    return AuditEntry(
        actor_kind=ActorKind.USER,
        actor=released_by,
        action=AuditAction.RELEASE,
        outcome=outcome,
        exchange=exchange,
        resource=f"QuarantinedMessage/{message_id}",
        detail=detail,
    )


async def release(
    store: CareweaveStore,
    intake: MessageIntake,
    message_id: int,
    *,
    released_by: str,
    fixed_payload: bytes | None = None,
) -> Released:
    if not released_by.strip():
        raise ReleaseRefused("say who releases the message (--by)")
    try:
        return await _release(
            store, intake, message_id, released_by=released_by, fixed_payload=fixed_payload
        )
    except ReleaseRefused as refusal:
        # The refusal text names codes and fields (the intake's reason), not content.
        await store.audit_log().aappend(
            _release_entry(message_id, released_by, AuditOutcome.REFUSED, str(refusal)[:500])
        )
        raise


async def _release(
    store: CareweaveStore,
    intake: MessageIntake,
    message_id: int,
    *,
    released_by: str,
    fixed_payload: bytes | None,
) -> Released:
    row = store.quarantined_message(message_id)
    if row is None:
        raise ReleaseRefused(f"no quarantined message #{message_id}")
    if row.status != QuarantineStatus.HELD.value:
        raise ReleaseRefused(f"message #{message_id} was already released ({row.release_result})")
    payload = fixed_payload if fixed_payload is not None else row.raw
    # quarantine=False: a message still refused is not kept a second time; the held
    # row stays as it was so the operator can try again.
    result = await intake.accept(payload, peer=f"quarantine#{message_id}", quarantine=False)
    if result.outcome not in (Outcome.ACCEPTED, Outcome.DUPLICATE) or not result.workflow_id:
        raise ReleaseRefused(
            f"message #{message_id} is still refused ({result.ack_code}): {result.reason}; "
            "it stays in quarantine"
        )
    store.mark_released(
        message_id,
        released_by=released_by,
        result=f"{result.outcome.value} into {result.workflow_id}",
        audit=_release_entry(
            message_id,
            released_by,
            AuditOutcome.SUCCESS,
            f"{result.outcome.value}{' (fixed)' if fixed_payload is not None else ''}",
            exchange=result.workflow_id,
        ),
    )
    return Released(message_id, result.outcome, result.workflow_id)
