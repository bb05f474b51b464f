"""Destination health: one long-lived workflow per destination (id
``destination-health/<name>``), up / degraded / down.

The destination's per-patient delivery queues (workflows/ordered_delivery.py) report to it:
before the first event of a burst they register and wait for its answer (send, or hold);
they report each attempt that found the destination unavailable (no answer, refused
connection, 5xx — not a refusal of the message itself) and their first success after one.
A run of ``failures_to_trip`` such failures in a row, across queues, trips it down; so does
an operator (`careweave destination down`). While down, every queue that asks is told to
hold: it waits without attempting, so neither its retry budget nor a reviewer is spent on
the outage. A failure trip is probed with backoff (activities/destination_health.py) and
lifted by the first successful probe; an operator's down only by an operator's up.

On the way up the held queues are released in the order they were held, at most
``replay_parallel_patients`` at a time, each pacing its sends so that together they stay
under ``replay_events_per_second``. A queue drains its own backlog in its original order
(nothing is rotated) and says when it is done, which releases the next; a queue whose head
fails for its own reasons goes to review and counts as done, so it holds nobody else.
Every change of state is an activity (audited by the worker's interceptor) and a log line.
Since ``publish-clearance`` the answer a queue starting a burst would get (send, unless down,
queues are held, or a replay is paused) is also in the workflow's memo (``clear_to_send``),
upserted in the workflow task that changes it (by the signal or update handler that did):
a queue reads it (a describe, no workflow task on either side) and registers only when it
does not say send.

An operator may pause a replay (`careweave destination pause`, also while still down):
released queues finish the event in hand and then hold, and no queue is released, until
`careweave destination resume`. A pause outlives a trip down and back up; it lifts itself
once nothing is left to replay. The current details (Temporal UI) say how far the replay
is: "replay: n of m events, k of p patients"; `careweave destination watch` draws it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError

from workflows import search_attributes as sa

with workflow.unsafe.imports_passed_through():
    from activities.destination_health import HealthActivities
    from models.destination_health import (
        CLEAR_TO_SEND_MEMO,
        QUEUE_NOTICE_SIGNAL,
        DestinationHealthState,
        DestinationNotice,
        DestinationStatus,
        HealthChange,
        HealthState,
        HeldQueue,
        NoticeState,
        OperatorCommand,
        ProbeRequest,
        ProbeResult,
        QueueReport,
        QueueReportKind,
        ReplayAction,
        ReplayCommand,
        ReplayProgress,
    )

EXCHANGE_NAME = "destination-health"
_ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
# The audit row of a change is worth retrying until it is written.
_AUDIT_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))
# Runs without it kept their answer to themselves: every queue had to ask by signal.
PUBLISH_CLEARANCE_PATCH = "publish-clearance"


@workflow.defn
class DestinationHealth:
    @workflow.init
    def __init__(self, state: DestinationHealthState) -> None:
        self._s = state
        # Notices to queues and audit rows, sent by the main loop (handlers cannot await
        # in order with each other; the loop sends them in the order they were decided).
        self._outbox: list[tuple[str, DestinationNotice]] = []
        self._changes: list[HealthChange] = []
        self._visible_dirty = True
        self._next_probe_at: datetime | None = None
        self._publishes_clearance = False
        self._published_clearance: bool | None = None

    @workflow.run
    async def run(self, state: DestinationHealthState) -> None:
        self._publishes_clearance = workflow.patched(PUBLISH_CLEARANCE_PATCH)
        if self._s.since is None:
            self._s.since = workflow.now()
        if self._probing():
            self._next_probe_at = workflow.now() + timedelta(seconds=self._s.probe_delay_seconds)
        workflow.upsert_search_attributes(
            [sa.EXCHANGE.value_set(EXCHANGE_NAME), sa.DESTINATION.value_set(state.destination)]
        )
        while True:
            self._lift_spent_pause()
            self._release_next()
            await self._flush()
            if self._history_is_long():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._release_next()
                await self._flush()
                workflow.continue_as_new(self._s)
            if self._probing():
                assert self._next_probe_at is not None
                wait = max((self._next_probe_at - workflow.now()).total_seconds(), 0.0)
                try:
                    await workflow.wait_condition(self._has_work, timeout=timedelta(seconds=wait))
                except TimeoutError:
                    await self._probe()
            else:
                await workflow.wait_condition(self._has_work)

    # -- what the queues and operators say -----------------------------------------------

    @workflow.signal
    def report(self, report: QueueReport) -> None:
        queue = report.queue_id
        if report.kind is QueueReportKind.REGISTER:
            self._answer(queue)
        elif report.kind is QueueReportKind.FAILED:
            self._failed(queue)
            self._note_held(report)
            self._answer(queue)
        elif report.kind is QueueReportKind.HELD:
            self._note_held(report)
        elif report.kind is QueueReportKind.RECOVERED:
            if queue in self._s.failing:
                self._s.failing.remove(queue)
            self._s.failure_run = 0
            if self._s.state is HealthState.DEGRADED:
                self._change(HealthState.UP, "deliveries", "a delivery succeeded")
        elif report.kind is QueueReportKind.DRAINED:
            draining = self._find(self._s.replaying, queue)
            if draining is not None:
                self._s.replaying.remove(draining)
                if self._s.replay is not None:
                    self._s.replay.queues_done += 1
                    self._s.replay.events_done += report.delivered
            self._visible_dirty = True
        self._publish_clearance()

    @workflow.update
    def command(self, command: OperatorCommand) -> DestinationStatus:
        by = f"operator {command.operator}"
        if command.state is HealthState.DOWN:
            if self._s.state is HealthState.DOWN:
                # Already down by failures: now an operator's hold, no probe lifts it.
                self._s.down_by = "operator"
                self._s.reason = command.reason
                self._changes.append(
                    HealthChange(
                        destination=self._s.destination,
                        previous=HealthState.DOWN,
                        state=HealthState.DOWN,
                        by=by,
                        detail="kept down by operator command",
                    )
                )
            else:
                self._change(HealthState.DOWN, by, "operator command", reason=command.reason)
        else:
            self._change(HealthState.UP, by, "operator command", reason=command.reason)
        self._publish_clearance()
        return self.status()

    @command.validator
    def _validate_command(self, command: OperatorCommand) -> None:
        if command.state is HealthState.DEGRADED:
            raise ValueError("an operator sets a destination up or down, not degraded")
        if not command.reason.strip():
            raise ValueError("a reason is required")

    @workflow.update
    def replay_control(self, command: ReplayCommand) -> DestinationStatus:
        by = f"operator {command.operator}"
        if command.action is ReplayAction.PAUSE:
            self._s.replay_paused = True
            # Released queues hold once the event in hand is sent (the queue checks before
            # each send); held ones stay held, as _release_next releases nobody now.
            for queue in self._s.replaying:
                self._outbox.append((queue.queue_id, DestinationNotice(state=NoticeState.HOLD)))
            detail = "replay paused by operator command"
        else:
            self._s.replay_paused = False
            if self._s.state is not HealthState.DOWN:
                pace = self._pace()
                for queue in self._s.replaying:
                    self._outbox.append(
                        (
                            queue.queue_id,
                            DestinationNotice(state=NoticeState.SEND, pace_seconds=pace),
                        )
                    )
            detail = "replay resumed by operator command"
        self._s.reason = command.reason
        workflow.logger.info("destination %s: %s", self._s.destination, detail)
        self._changes.append(
            HealthChange(
                destination=self._s.destination,
                previous=self._s.state,
                state=self._s.state,
                by=by,
                detail=detail,
            )
        )
        self._visible_dirty = True
        self._publish_clearance()
        return self.status()

    @replay_control.validator
    def _validate_replay_control(self, command: ReplayCommand) -> None:
        if not command.reason.strip():
            raise ValueError("a reason is required")
        if command.action is ReplayAction.PAUSE:
            if self._s.replay_paused:
                raise ValueError("the replay is already paused")
            if not self._replay_pending():
                raise ValueError("nothing to pause: the destination is up and holds nothing")
        elif not self._s.replay_paused:
            raise ValueError("the replay is not paused")

    @workflow.query
    def status(self) -> DestinationStatus:
        held = [*self._s.held, *self._s.replaying]
        oldest = [q.oldest_held_at for q in held if q.oldest_held_at is not None]
        return DestinationStatus(
            destination=self._s.destination,
            kind=self._s.kind,
            state=self._s.state,
            since=self._s.since,
            reason=self._s.reason,
            down_by=self._s.down_by,
            held_queues=len(self._s.held),
            held_events=sum(q.held_events for q in self._s.held),
            oldest_held_at=min(oldest) if oldest else None,
            last_probe_at=self._s.last_probe_at,
            last_probe=self._s.last_probe,
            replay=self._s.replay,
            replaying_queues=len(self._s.replaying),
            replay_paused=self._s.replay_paused,
        )

    # -- the state machine -------------------------------------------------------------

    def _answer(self, queue: str) -> None:
        """Send or hold: hold while down, and while earlier-held queues wait their turn."""
        draining = self._find(self._s.replaying, queue)
        if draining is not None and self._s.state is not HealthState.DOWN:
            if self._s.replay_paused:
                notice = DestinationNotice(state=NoticeState.HOLD)
            else:
                notice = DestinationNotice(state=NoticeState.SEND, pace_seconds=self._pace())
            self._outbox.append((queue, notice))
            return
        if not self._clear_to_send():
            if self._find(self._s.held, queue) is None:
                self._s.held.append(HeldQueue(queue_id=queue))
                replay = self._replay_under_way()
                if replay is not None:
                    # Held behind a replay under way: it is released in it, so it counts
                    # in it (else "done" outgrows "total" and the replay never looks done).
                    replay.queues_total += 1
                self._visible_dirty = True
            self._outbox.append((queue, DestinationNotice(state=NoticeState.HOLD)))
            return
        self._outbox.append((queue, DestinationNotice(state=NoticeState.SEND)))

    def _clear_to_send(self) -> bool:
        """What a queue starting a burst is told: send unless down or others are held (a
        paused replay holds newcomers too: they would otherwise overtake the held)."""
        return not (self._s.state is HealthState.DOWN or self._s.held or self._paused_replay())

    def _failed(self, queue: str) -> None:
        if self._s.state is HealthState.DOWN:
            return
        if queue not in self._s.failing:
            self._s.failing.append(queue)
        self._s.failure_run += 1
        if self._s.failure_run >= self._s.policy.failures_to_trip:
            self._change(
                HealthState.DOWN, "failures", f"{self._s.failure_run} failed deliveries in a row"
            )
        elif self._s.state is HealthState.UP:
            self._change(HealthState.DEGRADED, "failures", "a delivery found it unavailable")

    def _note_held(self, report: QueueReport) -> None:
        held = self._find(self._s.held, report.queue_id)
        found = held or self._find(self._s.replaying, report.queue_id)
        replay = self._replay_under_way()
        if held is not None and replay is not None:
            # Events that joined a queue waiting its turn in the replay are replayed too.
            replay.events_total += max(report.held_events - held.held_events, 0)
        if found is not None:
            found.held_events = report.held_events
            found.oldest_held_at = report.oldest_held_at
            self._visible_dirty = True

    def _change(self, state: HealthState, by: str, detail: str, *, reason: str = "") -> None:
        previous = self._s.state
        if previous is state:
            return
        now = workflow.now()
        self._s.state = state
        self._s.since = now
        self._s.reason = reason or detail
        if state is HealthState.DOWN:
            self._s.down_by = "failures" if by == "failures" else "operator"
            self._s.probe_delay_seconds = self._s.policy.first_probe_seconds
            self._next_probe_at = now + timedelta(seconds=self._s.probe_delay_seconds)
            self._s.replay = None
            # Queues that were draining a replay, then those that reported failures: hold.
            for queue in [q.queue_id for q in self._s.replaying] + list(self._s.failing):
                self._answer_hold(queue)
            self._s.replaying.clear()
            workflow.logger.warning(
                "destination %s down (%s): deliveries held", self._s.destination, detail
            )
        else:
            if previous is HealthState.DOWN:
                self._s.replay = ReplayProgress(
                    queues_total=len(self._s.held),
                    events_total=sum(q.held_events for q in self._s.held),
                )
                workflow.logger.info(
                    "destination %s up (%s): replaying %d held queue(s)",
                    self._s.destination,
                    detail,
                    len(self._s.held),
                )
            self._s.down_by = ""
            self._s.failure_run = 0
            self._s.failing.clear()
        self._changes.append(
            HealthChange(
                destination=self._s.destination,
                previous=previous,
                state=state,
                by=by,
                detail=detail,
            )
        )
        self._visible_dirty = True

    def _answer_hold(self, queue: str) -> None:
        if self._find(self._s.held, queue) is None:
            self._s.held.append(HeldQueue(queue_id=queue))
        self._outbox.append((queue, DestinationNotice(state=NoticeState.HOLD)))

    def _release_next(self) -> None:
        if self._s.state is HealthState.DOWN or self._s.replay_paused:
            return
        while self._s.held and len(self._s.replaying) < self._s.policy.replay_parallel_patients:
            queue = self._s.held.pop(0)
            self._s.replaying.append(queue)
            if self._s.replay is None:
                self._s.replay = ReplayProgress()
            self._outbox.append(
                (
                    queue.queue_id,
                    DestinationNotice(state=NoticeState.SEND, pace_seconds=self._pace()),
                )
            )
            self._visible_dirty = True

    def _pace(self) -> float:
        """Seconds between one queue's sends in a replay: the queues released together share
        the destination's rate."""
        sharing = max(1, min(self._s.policy.replay_parallel_patients, len(self._s.replaying)))
        return sharing / self._s.policy.replay_events_per_second

    def _replay_pending(self) -> bool:
        """Something a replay will send: the destination is down, or queues are held or
        draining."""
        return self._s.state is HealthState.DOWN or bool(self._s.held or self._s.replaying)

    def _replay_under_way(self) -> ReplayProgress | None:
        """The progress of the replay after an outage, once up (None while down or when
        no replay was started)."""
        return self._s.replay if self._s.state is not HealthState.DOWN else None

    def _paused_replay(self) -> bool:
        return self._s.replay_paused and bool(self._s.replaying)

    def _lift_spent_pause(self) -> None:
        """A pause with nothing left to hold back (the paused queues drained what they had
        in hand, none waits) ends by itself: it would otherwise hold the next outage's
        replay, which no operator paused."""
        if self._s.replay_paused and not self._replay_pending():
            self._s.replay_paused = False
            detail = "replay pause lifted: nothing left to replay"
            workflow.logger.info("destination %s: %s", self._s.destination, detail)
            self._changes.append(
                HealthChange(
                    destination=self._s.destination,
                    previous=self._s.state,
                    state=self._s.state,
                    by="replay",
                    detail=detail,
                )
            )
            self._visible_dirty = True

    def _probing(self) -> bool:
        return self._s.state is HealthState.DOWN and self._s.down_by == "failures"

    async def _probe(self) -> None:
        policy = self._s.policy
        workflow.set_current_details(f"{self._s.destination} down; probing")
        try:
            result = await workflow.execute_activity_method(
                HealthActivities.probe_destination,
                ProbeRequest(
                    destination=self._s.destination, timeout_seconds=policy.probe_timeout_seconds
                ),
                start_to_close_timeout=timedelta(seconds=policy.probe_timeout_seconds + 10),
                retry_policy=_ONE_ATTEMPT,
                summary=f"Probe {self._s.destination}",
            )
        except ActivityError as err:
            cause = err.cause
            text = cause.message if isinstance(cause, FailureError) else str(err)
            result = ProbeResult(ok=False, detail=f"probe failed: {text}"[:200])
        self._s.last_probe_at = workflow.now()
        self._s.last_probe = f"{'ok' if result.ok else 'failed'}: {result.detail}"
        self._visible_dirty = True
        if result.ok and self._probing():
            self._change(HealthState.UP, "probe", result.detail)
            return
        self._s.probe_delay_seconds = min(self._s.probe_delay_seconds * 2, policy.max_probe_seconds)
        self._next_probe_at = workflow.now() + timedelta(seconds=self._s.probe_delay_seconds)

    # -- the main loop's sends -------------------------------------------------------------

    def _has_work(self) -> bool:
        if self._clearance_unpublished():
            return True  # a change of answer no handler published (a queue forgotten)
        return bool(self._outbox or self._changes or self._visible_dirty) or (
            self._s.state is not HealthState.DOWN
            and not self._s.replay_paused
            and bool(self._s.held)
            and len(self._s.replaying) < self._s.policy.replay_parallel_patients
        )

    def _publish_clearance(self) -> None:
        """The memo a queue reads instead of asking, upserted by the handler that changed
        the answer (so in its workflow task, not once the main loop is free again) and by
        the main loop (its own releases, a lifted pause, the run's start)."""
        if self._clearance_unpublished():
            self._published_clearance = self._clear_to_send()
            workflow.upsert_memo({CLEAR_TO_SEND_MEMO: self._published_clearance})

    def _clearance_unpublished(self) -> bool:
        return self._publishes_clearance and self._clear_to_send() != self._published_clearance

    async def _flush(self) -> None:
        self._publish_clearance()
        while self._changes:
            change = self._changes.pop(0)
            await workflow.execute_activity_method(
                HealthActivities.record_destination_state,
                change,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_AUDIT_RETRY,
                summary=f"{change.destination}: {change.previous.value} -> {change.state.value}",
            )
        while self._outbox:
            queue, notice = self._outbox.pop(0)
            try:
                await workflow.get_external_workflow_handle(queue).signal(
                    QUEUE_NOTICE_SIGNAL, notice
                )
            except FailureError:
                # The queue run ended (idle close) or was terminated: nothing holds there.
                self._forget(queue)
        if self._visible_dirty:
            self._visible_dirty = False
            self._show()

    def _forget(self, queue: str) -> None:
        for listed in (self._s.held, self._s.replaying):
            found = self._find(listed, queue)
            if found is not None:
                listed.remove(found)
        if queue in self._s.failing:
            self._s.failing.remove(queue)

    def _show(self) -> None:
        status = self.status()
        workflow.upsert_search_attributes(
            [
                sa.DELIVERY_ALERT.value_set(status.state.value),
                sa.HELD_EVENTS.value_set(status.held_events),
                sa.OLDEST_HELD_AT.value_set(status.oldest_held_at)
                if status.oldest_held_at is not None
                else sa.OLDEST_HELD_AT.value_unset(),
            ]
        )
        text = f"{self._s.destination} {status.state.value}"
        if status.held_queues:
            text += f"; {status.held_events} event(s) held in {status.held_queues} queue(s)"
        text += replay_details(status)
        workflow.set_current_details(text)

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > self._s.policy.continue_as_new_after_events
        )

    @staticmethod
    def _find(queues: list[HeldQueue], queue_id: str) -> HeldQueue | None:
        return next((q for q in queues if q.queue_id == queue_id), None)


def replay_details(status: DestinationStatus) -> str:
    """The replay's part of the current details (Temporal UI): counts only, no PHI."""
    replay = status.replay
    if status.state is HealthState.DOWN:
        return "; replay paused" if status.replay_paused else ""
    if replay is None:
        return ""
    text = (
        f"; replay: {replay.events_done} of {replay.events_total} events, "
        f"{replay.queues_done} of {replay.queues_total} patients"
    )
    if status.replay_finished:
        return text + " (done)"
    return text + (" (paused)" if status.replay_paused else "")
