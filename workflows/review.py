"""The human review gate shared by every exchange.

A workflow that needs a person calls ``await self.ask_reviewer(...)``; the
reviewer answers with the ``decide_review`` update. The validator refuses a
decision for a review that is not pending, an unknown action or an empty
reason/reviewer, so nothing malformed ever enters the history. While a review
is pending the ReviewState search attribute is ``pending``, which is how
`careweave review list` and the Temporal UI find it; ReviewReason and ReviewRequestedAt
say what kind of review it is and since when (ops metrics count them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import search_attributes as sa
from workflows.patches import Patched

# Passed through: the exchanges build review contexts with the same classes from mappings
# (imported passed through too); a sandbox copy of this module would be another class.
with workflow.unsafe.imports_passed_through():
    from models.review import (
        ReviewAction,
        ReviewContext,
        ReviewDecision,
        ReviewReason,
        ReviewRecord,
        ReviewRequest,
    )

_T = TypeVar("_T")
# Runs that reached a review before this marker upserted ReviewState alone; they keep doing
# so on replay (the upsert's content is part of the command), new runs add the reason.
REVIEW_REASON_PATCH = "review-reason-attribute"


def failure_cause(error: BaseException) -> BaseException:
    """What an activity failed with: the cause of its ActivityError, or ``error`` itself.

    An activity's failure reaches the workflow wrapped in an ActivityError. A local
    activity's may arrive bare (temporalio 1.35): a non-retryable refusal always, and any
    failure when a worker replays it from its marker, though the same failure was wrapped
    when it happened (a local delivery's timeout: the live run sent it again as an
    activity, the replay failed the workflow, tests/histories/ordered_delivery/
    local_attempt_timed_out_then_activity.json). Deciding on the cause takes both shapes
    alike.
    """
    if isinstance(error, ActivityError) and error.cause is not None:
        return error.cause
    return error


def refusal_of(error: BaseException, *error_types: str) -> ApplicationError | None:
    """The ApplicationError of one of ``error_types`` an activity refused with, or None
    (checking only ActivityError would fail the whole workflow where a reviewer should
    have been asked: see failure_cause)."""
    cause = failure_cause(error)
    if isinstance(cause, ApplicationError) and cause.type in error_types:
        return cause
    return None


class ReviewableWorkflow:
    """Base class giving a workflow the review gate (state, update, validator, query)."""

    def __init__(self) -> None:
        self._pending_review: ReviewRequest | None = None
        self._decision: ReviewDecision | None = None
        self._review_history: list[ReviewRecord] = []
        # A subclass with local activities puts its RunPatches here (workflows/patches.py).
        self._patched: Patched = workflow.patched

    async def until_accepted(
        self,
        step: Callable[[], Awaitable[_T]],
        *,
        refused_as: str,
        reason: ReviewReason,
        summary: str,
        actions: dict[ReviewAction, str],
    ) -> _T | None:
        """Run ``step``; when an activity in it refuses with error type ``refused_as``, ask a
        reviewer (``summary``: the refusal's message is appended) and run it again on RETRY,
        give up (None) on any other decision. Other failures propagate."""
        while True:
            try:
                return await step()
            except (ActivityError, ApplicationError) as err:
                refusal = refusal_of(err, refused_as)
                if refusal is None:
                    raise
                decision = await self.ask_reviewer(
                    reason, f"{summary}: {refusal.message}", actions=actions
                )
                if decision.action is not ReviewAction.RETRY:
                    return None

    async def ask_reviewer(
        self,
        reason: ReviewReason,
        summary: str,
        *,
        details: tuple[str, ...] = (),
        actions: dict[ReviewAction, str] | None = None,
        refused_actions: dict[ReviewAction, str] | None = None,
        context: ReviewContext | None = None,
    ) -> ReviewDecision:
        """Block this exchange until a reviewer decides; every decision is kept in history.

        ``context`` is what the review page shows the reviewer (data the workflow already
        holds; part of its state, so it changes no command and old histories replay)."""
        review_id = f"r{len(self._review_history) + 1}"
        request = ReviewRequest(
            review_id=review_id,
            reason=reason,
            summary=summary,
            details=details,
            actions=actions or {},
            refused_actions=refused_actions or {},
            requested_at=workflow.now(),
            context=context,
        )
        self._pending_review = request
        self._decision = None
        pending: list[SearchAttributeUpdate[Any]] = [sa.REVIEW_STATE.value_set("pending")]
        if self._patched(REVIEW_REASON_PATCH):
            pending += [
                sa.REVIEW_REASON.value_set(reason.value),
                sa.REVIEW_REQUESTED_AT.value_set(request.requested_at),
            ]
        workflow.upsert_search_attributes(pending)
        workflow.set_current_details(f"Waiting for a reviewer: {reason.value} ({review_id})")
        await workflow.wait_condition(lambda: self._decision is not None)
        decision = self._decision
        assert decision is not None
        self._review_history.append(
            ReviewRecord(request=request, decision=decision, decided_at=workflow.now())
        )
        self._pending_review = None
        self._decision = None
        workflow.upsert_search_attributes([sa.REVIEW_STATE.value_set(decision.action.value)])
        workflow.set_current_details("")
        workflow.logger.info("review %s decided: %s by reviewer", review_id, decision.action.value)
        return decision

    @workflow.update
    async def decide_review(self, decision: ReviewDecision) -> ReviewRecord:
        self._decision = decision
        await workflow.wait_condition(
            lambda: bool(self._review_history) and self._review_history[-1].decision is decision
        )
        return self._review_history[-1]

    @decide_review.validator
    def _validate_review_decision(self, decision: ReviewDecision) -> None:
        pending = self._pending_review
        if pending is None or self._decision is not None:
            raise ValueError("no review is pending for this exchange")
        if decision.review_id != pending.review_id:
            raise ValueError(
                f"review {decision.review_id} is not pending (pending: {pending.review_id})"
            )
        if not decision.reason.strip():
            raise ValueError("a decision needs a reason")
        if not decision.reviewer.strip():
            raise ValueError("a decision needs the reviewer's identity")
        if decision.action in pending.refused_actions:
            raise ValueError(
                f"{decision.action.value} is refused: {pending.refused_actions[decision.action]}"
            )
        if pending.actions and decision.action not in pending.actions:
            raise ValueError(f"action {decision.action.value} is not offered for this review")
        if decision.action is ReviewAction.EDIT and not (decision.edited_message or "").startswith(
            "MSH"
        ):
            raise ValueError("an edit needs the corrected message, starting with MSH")
        if decision.action is not ReviewAction.EDIT and decision.edited_message is not None:
            raise ValueError("only an edit carries a message")

    @workflow.query
    def pending_review(self) -> ReviewRequest | None:
        return self._pending_review

    @workflow.query
    def review_history(self) -> list[ReviewRecord]:
        return list(self._review_history)
