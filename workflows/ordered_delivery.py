"""Ordered delivery: one destination, one patient, one event at a time, in arrival order.

Every exchange that has something for a destination signal-with-starts this workflow
(id ``ordered-delivery/<destination>/<patient key>``). The head of the queue is sent
until the destination accepts it; a failure holds the queue (nothing overtakes it),
temporary failures are retried per the destination's policy, and when the budget is
spent a reviewer decides: retry, skip with a reason, or send an edited message. Other
patients and other destinations are other workflows, so they never wait on this one.
While the head is failing, the DeliveryAlert search attribute is ``failing``.

Runs that carry the ``destination-health`` patch marker also answer to their destination's
health workflow (workflows/destination_health.py): before the first event of a burst they
ask it whether to send; they report attempts that found the destination unavailable; and
while it says hold they wait (DeliveryAlert ``held``) without attempting, so an outage
spends no retry budget and sends nothing to review. Released after the outage, they drain
their backlog in its original order at the pace the health workflow gives.

Runs with ``delivery-local-first`` take both common steps inside a workflow task: a burst
first reads the health workflow's published answer (its memo, by a local activity) and asks
by signal only when that is not a plain "send"; each event's first attempt is a local
activity, and only its retries (and a first attempt with no answer in 20 s) are activities.
A burst to a healthy destination thus takes one workflow task of the queue and none of the
health workflow (before: about four of the queue, two of the health workflow, an activity).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

from workflows import search_attributes as sa
from workflows.destination_health import DestinationHealth
from workflows.exchange_search import coalesced_upserts, upsert_changed
from workflows.patches import RunPatches
from workflows.review import ReviewableWorkflow, failure_cause

with workflow.unsafe.imports_passed_through():
    from activities.ordered_delivery import (
        DESTINATION_REJECTED,
        DESTINATION_UNAVAILABLE,
        DeliveryActivities,
        ForwardRequest,
    )
    from models.delivery import (
        DeliverRequest,
        DeliverResult,
        DeliveryItem,
        DeliveryRecord,
        DeliveryState,
        QueueHandOver,
    )
    from models.destination_health import (
        QUEUE_NOTICE_SIGNAL,
        DestinationNotice,
        NoticeState,
        QueueReport,
        QueueReportKind,
        health_workflow_id,
    )
    from models.review import DeliveryFailureContext, ReviewAction, ReviewReason

EXCHANGE_NAME = "ordered-delivery"
RECENT_IDS_KEPT = 500
# Running queues started before destination health replay without it (they never asked it).
DESTINATION_HEALTH_PATCH = "destination-health"
# Runs without it slept the whole replay pace before a send even when told to hold during it
# (then sent); with it, a hold (an operator's pause, a trip down) ends the pause between
# events and the next event waits: nothing is sent while paused but the event in hand.
PAUSABLE_PACE_PATCH = "replay-pace-holds"
# Runs without it asked the health workflow by signal before every burst and sent every
# attempt as an activity. With it, a burst first reads the health workflow's published
# answer (a local activity; the signal handshake only when that says anything but send),
# and each event's first attempt is a local activity (see _send).
DELIVERY_LOCAL_FIRST_PATCH = "delivery-local-first"
# Failures that say the destination, not this event, is the problem ("Timeout": the
# activity's own start-to-close timeout).
_OUTAGE_ERRORS = frozenset({DESTINATION_UNAVAILABLE, "Timeout"})
_ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
# Longer than a destination's own default limits (an MLLP ACK 10 s, a FHIR answer 15 s), so
# that with them a silent destination ends a local attempt as it ends an activity's: counted,
# and reported as an outage. Only a destination configured to wait longer meets this limit;
# its attempt is then sent again as an activity (heartbeat, full limit) under the same
# MSH-10, rather than holding a local activity slot (every exchange's parsing shares them).
_LOCAL_SEND_TIMEOUT = timedelta(seconds=20)
DELIVERY_HEARTBEAT_TIMEOUT_SECONDS = 15


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
        self._arrived: dict[str, datetime] = dict(state.arrived_at)
        # Destination health (patched runs only): the last notice, whether this burst was
        # cleared to send, whether this queue is holding or draining a replay.
        self._with_health = False
        self._notice: DestinationNotice | None = None
        self._cleared = False
        self._held = False
        self._replaying = False
        self._pace_seconds = 0.0
        self._replayed = 0
        self._reported_failing = False
        # A patient merge retired this queue's patient: what it holds goes to the survivor's
        # queue, between two events (never the one in hand), before anything else is sent.
        self._handovers: list[QueueHandOver] = []

    @workflow.run
    async def run(self, state: DeliveryState) -> int:
        self._patched = RunPatches()
        queue = [
            sa.EXCHANGE.value_set(EXCHANGE_NAME),
            sa.DESTINATION.value_set(state.destination),
            sa.DELIVERY_ALERT.value_set("failing" if state.failing else "ok"),
        ]
        if coalesced_upserts(self._patched):
            upsert_changed(queue)
        else:
            workflow.upsert_search_attributes(queue)
        self._with_health = self._patched(DESTINATION_HEALTH_PATCH)
        # Asked here, before any local activity, so that runs which started without it
        # keep every step as they recorded it.
        self._local_first = self._with_health and self._patched(DELIVERY_LOCAL_FIRST_PATCH)
        while True:
            if self._handovers:
                await self._hand_over()
                continue
            if not self._queue:
                workflow.set_current_details(
                    f"Queue empty; waiting for events for {state.destination}"
                )
                try:
                    await workflow.wait_condition(
                        lambda: bool(self._queue or self._handovers),
                        timeout=timedelta(seconds=state.idle_close_seconds),
                    )
                except TimeoutError:
                    # Idle for idle_close_seconds: the queue completes (wait_condition raises
                    # on its timeout; escaping, it used to fail the whole queue workflow).
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if not self._queue and not self._handovers:
                        return self._state.delivered
                continue
            if self._history_is_long():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carry_over())
            if self._with_health and not self._cleared:
                await self._ask_health()
            item = self._queue[0]
            await self._deliver(item)
            self._queue.popleft()
            self._arrived.pop(item.event_id, None)
            self._recent.append(item.event_id)
            if self._with_health and not self._queue:
                # The next burst asks again: the destination may have gone down meanwhile.
                self._cleared = False
                await self._end_replay()

    @workflow.signal
    def enqueue(self, item: DeliveryItem) -> None:
        if item.event_id in self._recent or any(q.event_id == item.event_id for q in self._queue):
            self._duplicates += 1
            return
        self._queue.append(item)
        self._arrived[item.event_id] = workflow.now()

    @workflow.signal
    def hand_over(self, request: QueueHandOver) -> None:
        """From a patient merge: this queue's patient was merged into another; what is still
        queued goes to the survivor's queue, then the merge's announcement."""
        event_id = request.announcement.event_id
        if event_id in self._recent or any(
            h.announcement.event_id == event_id for h in self._handovers
        ):
            self._duplicates += 1
            return
        self._handovers.append(request)

    @workflow.signal(name=QUEUE_NOTICE_SIGNAL)
    def destination_notice(self, notice: DestinationNotice) -> None:
        """From the destination's health workflow: send (at a pace, in a replay) or hold."""
        self._notice = notice
        self._held = notice.state is NoticeState.HOLD
        if notice.state is NoticeState.SEND and notice.pace_seconds > 0:
            if not self._replaying:
                self._replayed = 0
            self._replaying = True
            self._pace_seconds = notice.pace_seconds

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
            if self._with_health:
                await self._wait_while_held()
                if self._replaying and self._replayed and attempt == 0 and not revision:
                    await self._pace()
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
                result = await self._send(request, local=self._local_first and total_attempts == 1)
            except (ActivityError, ApplicationError) as err:
                cause = failure_cause(err)
                error_type = "Timeout"
                if isinstance(cause, ApplicationError):
                    error_type = cause.type or ""
                message = cause.message if isinstance(cause, FailureError) else str(err)
                self._set_failing(True, error_type)
                policy = item.policy
                if self._with_health and error_type in _OUTAGE_ERRORS:
                    if await self._report_outage(last_attempt=attempt >= policy.max_attempts):
                        # Held (the destination is down): this attempt is not held against
                        # the event; the budget resumes after the outage.
                        attempt -= 1
                        continue
                if error_type != DESTINATION_REJECTED and attempt < policy.max_attempts:
                    delay = min(
                        policy.first_retry_seconds * 2 ** (attempt - 1), policy.max_retry_seconds
                    )
                    workflow.set_current_details(
                        f"{destination} failing ({message}); next attempt in {delay:.0f} s, "
                        f"{policy.max_attempts - attempt} left before review"
                    )
                    if self._with_health:
                        # A hold from the health workflow ends the wait early.
                        try:
                            await workflow.wait_condition(
                                lambda: self._held, timeout=timedelta(seconds=delay)
                            )
                        except TimeoutError:
                            pass
                    else:
                        await workflow.sleep(timedelta(seconds=delay))
                    continue
                raw_answer = _raw_answer(cause)
                actions = {
                    ReviewAction.RETRY: "send it again (after the destination was fixed)",
                    ReviewAction.SKIP: "move on without it; the next event goes next",
                }
                if self._state.kind == "mllp":
                    actions[ReviewAction.EDIT] = "send this corrected message instead"
                if self._with_health:
                    # This event is in a reviewer's hands: the replay moves on to others.
                    await self._end_replay()
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
            if self._with_health:
                self._replayed += 1
                if self._reported_failing:
                    self._reported_failing = False
                    await self._report(QueueReportKind.RECOVERED)
            self._state.delivered += 1
            self._record(item, "edited" if revision else "delivered", total_attempts, result.detail)
            return

    async def _send(self, request: DeliverRequest, *, local: bool) -> DeliverResult:
        send = (
            DeliveryActivities.deliver_to_fhir
            if self._state.kind == "fhir"
            else DeliveryActivities.deliver_to_mllp
        )
        summary = f"Deliver {request.item.subscription.value} to {request.destination}"
        if local:
            # Inside the workflow task that decided it: no activity task, no second
            # workflow task for its result.
            try:
                return await workflow.execute_local_activity_method(
                    send,
                    request,
                    start_to_close_timeout=_LOCAL_SEND_TIMEOUT,
                    retry_policy=_ONE_ATTEMPT,
                    summary=summary,
                )
            except FailureError as err:
                if isinstance(failure_cause(err), (ApplicationError, CancelledError)):
                    raise
                # No answer in time (or the attempt was lost): sent again below.
        return await workflow.execute_activity_method(
            send,
            request,
            start_to_close_timeout=timedelta(seconds=120),
            # The activity beats while it waits for the answer: a worker that died
            # mid-send is noticed in seconds, not after the 120 s limit.
            heartbeat_timeout=timedelta(seconds=DELIVERY_HEARTBEAT_TIMEOUT_SECONDS),
            retry_policy=_ONE_ATTEMPT,
            summary=summary,
        )

    async def _hand_over(self) -> None:
        """Forward everything queued, in order, then each merge's announcement, to the
        survivor's queue; the destination sees both records' events before the merge."""
        handover = self._handovers[0]
        items = [*self._queue, handover.announcement]
        workflow.set_current_details(
            f"Merged: handing {len(self._queue)} event(s) to the survivor's queue"
        )
        await workflow.execute_activity_method(
            DeliveryActivities.forward_deliveries,
            ForwardRequest(
                destination=self._state.destination,
                kind=self._state.kind,
                patient_key=handover.survivor_patient_key,
                items=items,
            ),
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=60),
            summary="Hand the queue over to the surviving patient's queue",
        )
        for item in items:
            self._arrived.pop(item.event_id, None)
            self._recent.append(item.event_id)
            self._record(item, "handed-over", 0, "to the surviving patient's queue")
        self._queue.clear()
        self._handovers.pop(0)
        if self._with_health:
            # A replay released this queue: it has nothing left of it.
            self._cleared = False
            await self._end_replay()

    # -- destination health (patched runs) ---------------------------------------------

    async def _ask_health(self) -> None:
        """Register with the destination's health workflow and wait for its answer; without
        a health workflow (or its answer in time) the queue sends as it always did."""
        if self._local_first and not self._held and not self._replaying:
            if await self._published_clear():
                self._cleared = True
                return
        self._notice = None
        if await self._report(QueueReportKind.REGISTER):
            try:
                await workflow.wait_condition(
                    lambda: self._notice is not None,
                    timeout=timedelta(seconds=self._state.health_answer_timeout_seconds),
                )
            except TimeoutError:
                pass
        await self._wait_while_held()
        self._cleared = True

    async def _published_clear(self) -> bool:
        """The health workflow's published answer (its memo), read without a workflow task
        on either side; False when it could not be read, and the queue asks by signal."""
        try:
            return await workflow.execute_local_activity_method(
                DeliveryActivities.destination_clear,
                self._state.destination,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=_ONE_ATTEMPT,
                summary=f"Is {self._state.destination} clear to send",
            )
        except FailureError as err:
            if isinstance(failure_cause(err), CancelledError):
                raise
            return False

    async def _report_outage(self, *, last_attempt: bool) -> bool:
        """Tell the health workflow an attempt found the destination unavailable; True when
        the queue is (now) told to hold. On the budget's last attempt the answer is awaited:
        an outage, not the event, must not send it to review."""
        self._notice = None
        self._reported_failing = True
        sent = await self._report(QueueReportKind.FAILED)
        if sent and last_attempt:
            try:
                await workflow.wait_condition(
                    lambda: self._notice is not None,
                    timeout=timedelta(seconds=self._state.health_answer_timeout_seconds),
                )
            except TimeoutError:
                pass
        return self._held

    async def _wait_while_held(self) -> None:
        if not self._held:
            return
        workflow.upsert_search_attributes([sa.DELIVERY_ALERT.value_set("held")])
        reported = -1
        while self._held:
            if len(self._queue) != reported:
                reported = len(self._queue)
                workflow.set_current_details(
                    f"Held by {self._state.destination}'s health (down, or its replay "
                    f"paused or not yet at this queue); {reported} event(s) waiting"
                )
                await self._report(QueueReportKind.HELD)
            await workflow.wait_condition(
                lambda waiting=reported: not self._held or len(self._queue) != waiting  # type: ignore[misc]
            )
        workflow.upsert_search_attributes(
            [sa.DELIVERY_ALERT.value_set("failing" if self._state.failing else "ok")]
        )

    async def _pace(self) -> None:
        """The replay pace between two sends, cut short by a hold, which is then waited out."""
        pace = timedelta(seconds=self._pace_seconds)
        if not self._patched(PAUSABLE_PACE_PATCH):
            await workflow.sleep(pace)
            return
        try:
            await workflow.wait_condition(lambda: self._held, timeout=pace)
        except TimeoutError:
            return
        await self._wait_while_held()

    async def _end_replay(self) -> None:
        if not self._replaying:
            return
        self._replaying = False
        await self._report(QueueReportKind.DRAINED, delivered=self._replayed)

    async def _report(self, kind: QueueReportKind, *, delivered: int = 0) -> bool:
        """Signal the health workflow; False when there is none (not started, ended)."""
        arrivals = [self._arrived[q.event_id] for q in self._queue if q.event_id in self._arrived]
        oldest = min(arrivals, default=None)
        report = QueueReport(
            queue_id=workflow.info().workflow_id,
            kind=kind,
            held_events=len(self._queue),
            oldest_held_at=oldest,
            delivered=delivered,
        )
        try:
            await workflow.get_external_workflow_handle(
                health_workflow_id(self._state.destination)
            ).signal(DestinationHealth.report, report)
        except FailureError:
            return False
        return True

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
                "arrived_at": dict(self._arrived),
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
