"""Ordered delivery: one destination, one patient, one event at a time, in arrival order.

Every exchange that has something for a destination signal-with-starts this workflow
(id ``ordered-delivery/<destination>/<patient key>``). The head of the queue is sent
until the destination accepts it; a failure holds the queue (nothing overtakes it),
temporary failures are retried per the destination's policy, and when the budget is
spent a reviewer decides: retry, skip with a reason, or send an edited message. Other
patients and other destinations are other workflows, so they never wait on this one.
While the head is failing, the DeliveryAlert search attribute is ``failing``.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

from workflows import search_attributes as sa
from workflows.review import ReviewableWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.ordered_delivery import (
        DESTINATION_REJECTED,
        DeliveryActivities,
    )
    from models.delivery import (
        DeliverRequest,
        DeliveryItem,
        DeliveryRecord,
        DeliveryState,
    )
    from models.review import DeliveryFailureContext, ReviewAction, ReviewReason

EXCHANGE_NAME = "ordered-delivery"
RECENT_IDS_KEPT = 500
_ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)


@workflow.defn
class OrderedDelivery(ReviewableWorkflow):
    @workflow.init
    def __init__(self, state: DeliveryState) -> None:
        super().__init__()
        self._state = state
        self._queue: deque[DeliveryItem] = deque(state.queue)
        self._recent: deque[str] = deque(state.recent_event_ids, maxlen=RECENT_IDS_KEPT)
        # Carried across continue-as-new, bounded like the event ids it describes.
        self._log: list[DeliveryRecord] = list(state.delivery_log)
        self._duplicates = 0

    @workflow.run
    async def run(self, state: DeliveryState) -> int:
        workflow.upsert_search_attributes(
            [
                sa.EXCHANGE.value_set(EXCHANGE_NAME),
                sa.DESTINATION.value_set(state.destination),
                sa.DELIVERY_ALERT.value_set("failing" if state.failing else "ok"),
            ]
        )
        while True:
            if not self._queue:
                workflow.set_current_details(
                    f"Queue empty; waiting for events for {state.destination}"
                )
                try:
                    await workflow.wait_condition(
                        lambda: bool(self._queue),
                        timeout=timedelta(seconds=state.idle_close_seconds),
                    )
                except TimeoutError:
                    # Idle for idle_close_seconds: the queue completes (wait_condition raises
                    # on its timeout; escaping, it used to fail the whole queue workflow).
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if not self._queue:
                        return self._state.delivered
                    continue
            if self._history_is_long():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carry_over())
            item = self._queue[0]
            await self._deliver(item)
            self._queue.popleft()
            self._recent.append(item.event_id)

    @workflow.signal
    def enqueue(self, item: DeliveryItem) -> None:
        if item.event_id in self._recent or any(q.event_id == item.event_id for q in self._queue):
            self._duplicates += 1
            return
        self._queue.append(item)

    @workflow.query
    def queue_length(self) -> int:
        return len(self._queue)

    @workflow.query
    def delivery_log(self) -> list[DeliveryRecord]:
        return list(self._log)

    async def _deliver(self, item: DeliveryItem) -> None:
        destination = self._state.destination
        replacement: str | None = None
        revision = 0
        attempt = 0
        total_attempts = 0
        while True:
            attempt += 1
            total_attempts += 1
            request = DeliverRequest(
                destination=destination,
                item=item,
                replacement_message=replacement,
                revision=revision,
                attempt=total_attempts,
            )
            workflow.set_current_details(
                f"Sending {item.subscription.value} event to {destination} (attempt {attempt})"
            )
            try:
                result = await workflow.execute_activity_method(
                    DeliveryActivities.deliver_to_fhir
                    if self._state.kind == "fhir"
                    else DeliveryActivities.deliver_to_mllp,
                    request,
                    start_to_close_timeout=timedelta(seconds=120),
                    retry_policy=_ONE_ATTEMPT,
                    summary=f"Deliver {item.subscription.value} to {destination}",
                )
            except ActivityError as err:
                cause = err.cause
                error_type = "Timeout"
                if isinstance(cause, ApplicationError):
                    error_type = cause.type or ""
                message = cause.message if isinstance(cause, FailureError) else str(err)
                self._set_failing(True, error_type)
                policy = item.policy
                if error_type != DESTINATION_REJECTED and attempt < policy.max_attempts:
                    delay = min(
                        policy.first_retry_seconds * 2 ** (attempt - 1), policy.max_retry_seconds
                    )
                    workflow.set_current_details(
                        f"{destination} failing ({message}); next attempt in {delay:.0f} s, "
                        f"{policy.max_attempts - attempt} left before review"
                    )
                    await workflow.sleep(timedelta(seconds=delay))
                    continue
                raw_answer = _raw_answer(cause)
                actions = {
                    ReviewAction.RETRY: "send it again (after the destination was fixed)",
                    ReviewAction.SKIP: "move on without it; the next event goes next",
                }
                if self._state.kind == "mllp":
                    actions[ReviewAction.EDIT] = "send this corrected message instead"
                decision = await self.ask_reviewer(
                    ReviewReason.DELIVERY_FAILED,
                    f"{destination} did not accept the {item.subscription.value} event after "
                    f"{attempt} attempt(s): {message}",
                    details=(f"event {item.event_id}", *([raw_answer] if raw_answer else [])),
                    actions=actions,
                    context=DeliveryFailureContext(
                        destination=destination,
                        destination_kind=self._state.kind,
                        event_id=item.event_id,
                        attempts=attempt,
                        error_type=error_type,
                        raw_answer=raw_answer,
                        sent_message=_sent_message(cause) or replacement or item.message_text,
                    ),
                )
                if decision.action is ReviewAction.SKIP:
                    # The queue moves on: the destination is no longer holding anything up.
                    self._set_failing(False, "")
                    self._record(item, "skipped", total_attempts, decision.reason)
                    self._state.skipped += 1
                    return
                if decision.action is ReviewAction.EDIT:
                    replacement = decision.edited_message
                    revision += 1
                attempt = 0
                continue
            self._set_failing(False, "")
            self._state.delivered += 1
            self._record(item, "edited" if revision else "delivered", total_attempts, result.detail)
            return

    def _record(self, item: DeliveryItem, outcome: str, attempts: int, detail: str) -> None:
        self._log.append(
            DeliveryRecord(
                event_id=item.event_id,
                subscription=item.subscription,
                outcome=outcome,
                attempts=attempts,
                detail=detail,
            )
        )
        self._log = self._log[-RECENT_IDS_KEPT:]

    def _set_failing(self, failing: bool, error_type: str) -> None:
        if failing == self._state.failing:
            return
        self._state.failing = failing
        workflow.upsert_search_attributes(
            [sa.DELIVERY_ALERT.value_set("failing" if failing else "ok")]
        )
        # One line per change of state, not per attempt: what an operator's alert rule keys on.
        if failing:
            workflow.logger.warning(
                "destination %s failing (%s)", self._state.destination, error_type
            )
        else:
            workflow.logger.info("destination %s recovered", self._state.destination)

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self._state.continue_as_new_after_events
        )

    def _carry_over(self) -> DeliveryState:
        return self._state.model_copy(
            update={
                "queue": list(self._queue),
                "recent_event_ids": list(self._recent),
                "delivery_log": list(self._log),
            }
        )


def _raw_answer(cause: BaseException | None) -> str:
    """The partner's raw ACK, when the activity attached it (ApplicationError details)."""
    if isinstance(cause, ApplicationError) and cause.details:
        first = cause.details[0]
        return first if isinstance(first, str) else ""
    return ""


def _sent_message(cause: BaseException | None) -> str:
    """The message as the activity sent it (readdressed), when it said (details[1])."""
    if isinstance(cause, ApplicationError) and len(cause.details) > 1:
        sent = cause.details[1]
        return sent if isinstance(sent, str) else ""
    return ""
