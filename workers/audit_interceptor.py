"""Every activity execution on the worker leaves one audit row, written after it ends.

The action of a success is the one the activity's exchange declares (TRANSFORM for parse
+ map, PUSH for writes to a destination, ACCESS for reads and routing; exchanges/); a
failure is an EXCEPTION row naming the error type, never its message. An attempt after
the first adds a RETRY row (same outcome and detail) just before its outcome row, in the
same transaction. Deliveries are retried by their workflow (single-attempt activities),
so their attempt is the one the request carries. Local activities pass through here too,
and say so ("attempt 1 (local)"): a step whose local attempt failed goes on as an activity
whose own first attempt is attempt 1 again.
Rows of activities ending at the same time are committed together (``GroupCommit``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from adapters.audit_log import AuditLog, GroupCommit
from models.audit import ActorKind, AuditAction, AuditEntry, AuditOutcome
from models.delivery import DeliverRequest

WORKER_ACTOR = "careweave-worker"


def failure_detail(error: BaseException) -> str:
    """Error class and ApplicationError type only: the message may quote the data."""
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, ApplicationError):
        retry = "non-retryable" if error.non_retryable else "retryable"
        return f"ApplicationError {error.type or '-'} ({retry})"
    return type(error).__name__


def _resource(activity_type: str, args: Any) -> str:
    # Deliveries name their destination (a routing-file name, not patient data).
    destination = getattr(args[0], "destination", None) if args else None
    return f"{activity_type} -> {destination}" if isinstance(destination, str) else activity_type


def _attempt(temporal_attempt: int, args: Any) -> int:
    # A delivery request says which send of the event this is (a count, no patient data);
    # Temporal's own attempt counts on top of it for activities that Temporal retries.
    if args and isinstance(args[0], DeliverRequest):
        return args[0].attempt + temporal_attempt - 1
    return temporal_attempt


def _attempt_text(attempt: int, *, local: bool) -> str:
    return f"attempt {attempt} (local)" if local else f"attempt {attempt}"


def _success_detail(attempt: str, args: Any) -> str:
    # An input that describes what it records (a destination's change of state) says so;
    # it is Careweave's own text (models/destination_health.py HealthChange), no PHI.
    described = getattr(args[0], "audit_detail", None) if args else None
    if isinstance(described, str) and described:
        return f"{described}, {attempt}"
    return attempt


class _AuditedActivity(ActivityInboundInterceptor):
    def __init__(
        self,
        next: ActivityInboundInterceptor,
        audit_log: GroupCommit,
        actions: Mapping[str, AuditAction],
    ) -> None:
        super().__init__(next)
        self._audit_log = audit_log
        self._actions = actions

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        # The worker refuses to start with an activity that has no declared action
        # (ExchangeRegistry.activities); EXCEPTION marks one that slipped past it anyway.
        action = self._actions.get(info.activity_type, AuditAction.EXCEPTION)
        attempt = _attempt(info.attempt, input.args)
        attempt_text = _attempt_text(attempt, local=info.is_local)

        def row(action: AuditAction, outcome: AuditOutcome, detail: str) -> AuditEntry:
            return AuditEntry(
                actor_kind=ActorKind.SERVICE,
                actor=WORKER_ACTOR,
                action=action,
                outcome=outcome,
                exchange=info.workflow_id,
                resource=_resource(info.activity_type, input.args),
                detail=detail,
            )

        def rows(outcome_row: AuditEntry) -> list[AuditEntry]:
            if attempt == 1:
                return [outcome_row]
            retry = outcome_row.model_copy(update={"action": AuditAction.RETRY})
            return [retry, outcome_row]

        try:
            result = await super().execute_activity(input)
        except BaseException as error:
            detail = f"{failure_detail(error)}, {attempt_text}"
            failed = row(AuditAction.EXCEPTION, AuditOutcome.FAILURE, detail)
            # Written even while cancelled: the row is what says the step stopped.
            await asyncio.shield(self._audit_log.append_many(rows(failed)))
            raise
        done = row(action, AuditOutcome.SUCCESS, _success_detail(attempt_text, input.args))
        # No step counts as done without its row: if the row cannot be written the
        # activity fails and is retried (every activity is idempotent).
        await self._audit_log.append_many(rows(done))
        return result


class AuditInterceptor(Interceptor):
    """Registered on the worker (open_worker) with the database's audit log and the audit
    action of every activity type (ExchangeRegistry.audit_actions)."""

    def __init__(self, audit_log: AuditLog, actions: Mapping[str, AuditAction]) -> None:
        self._audit_log = GroupCommit(audit_log)
        self._actions = dict(actions)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _AuditedActivity(next, self._audit_log, self._actions)
