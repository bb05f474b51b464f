"""Releasing a quarantined message: resubmit it, as kept or as fixed, through the same intake."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.database import CareweaveStore
from models.records import QuarantineStatus
from workers.intake import MessageIntake, Outcome


class ReleaseRefused(Exception):
    """The message stays in quarantine; the text says why."""


@dataclass(frozen=True)
class Released:
    message_id: int
    outcome: Outcome
    workflow_id: str


async def release(
    store: CareweaveStore,
    intake: MessageIntake,
    message_id: int,
    *,
    released_by: str,
    fixed_payload: bytes | None = None,
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
    )
    return Released(message_id, result.outcome, result.workflow_id)
