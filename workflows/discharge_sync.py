"""Discharge sync: one encounter's discharge reaches every subscribed system, in order.

ADT^A03 starts the exchange (id ``discharge-sync/<facility>/<encounter key>``); A13
(cancel discharge) compensates downstream; A08s after the discharge that change the
diagnoses (new or amended DG1) follow to the same destinations. For each event the
exchange asks the routing file (loaded by the worker; its version is recorded here as
an activity result) who subscribes, and hands the event to each destination's
per-patient ordered queue. The exchange closes after a quiet period.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from workflows.exchange_search import (
    coalesced_upserts,
    upsert_exchange_start,
    upsert_exchange_status,
)
from workflows.inbox import MessageInbox
from workflows.patches import RunPatches
from workflows.review import ReviewableWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.discharge_sync import (
        ADT_MESSAGE_INVALID,
        ClosedDischargeRequest,
        DischargeActivities,
        InterpretAdtInput,
        interpret_adt,
    )
    from activities.ordered_delivery import DeliveryActivities, EnqueueRequest
    from models.delivery import DeliveryItem
    from models.destinations import Subscription
    from models.discharge import (
        AdtEvent,
        AdtTrigger,
        DischargeOnRecord,
        DischargeSyncSummary,
        RoutedEvent,
    )
    from models.exchanges import DischargeSyncInput
    from models.messages import InboundMessage
    from models.review import ReviewAction, ReviewReason

EXCHANGE_NAME = "discharge-sync"
# Runs started before it route and enqueue with (remote) activities, as their histories say.
LOCAL_ROUTING_PATCH = "discharge-local-routing"
RECALL_CLOSED_PATCH = "recall-closed-discharge"


@workflow.defn
class DischargeSync(ReviewableWorkflow):
    @workflow.init
    def __init__(self, params: DischargeSyncInput) -> None:
        super().__init__()
        self._params = params
        self._inbox = MessageInbox()
        self._events: list[RoutedEvent] = []
        # The discharge this exchange delivered (None before the A03 and after an A13);
        # an A08 after it carries it to the FHIR mapping.
        self._discharge: DischargeOnRecord | None = None
        self._diagnoses: tuple[tuple[str, str, str], ...] = ()
        self._status = "received"
        # Set when this run took its discharge from a closed run of the same encounter
        # (a late A08): a diagnosis change then waits for a reviewer.
        self._closed_run_id = ""
        self._recalled = False

    @workflow.run
    async def run(self, params: DischargeSyncInput) -> DischargeSyncSummary:
        self._patched = RunPatches()
        upsert_exchange_start(
            EXCHANGE_NAME, params.facility, coalesced=coalesced_upserts(self._patched)
        )
        # Quiet for close_after_seconds: the exchange completes.
        await self._inbox.serve(
            params.close_after_seconds,
            self._handle,
            lambda: f"Status {self._status}; open {params.close_after_seconds:.0f} s for A13/A08",
            patched=self._patched,
        )
        return DischargeSyncSummary(
            status=self._status,
            events=self._events,
            discharge=self._discharge,
            diagnoses=list(self._diagnoses),
        )

    @workflow.signal
    def adt_event(self, message: InboundMessage) -> None:
        self._inbox.accept(message)

    @workflow.query
    def status(self) -> str:
        return self._status

    @workflow.query
    def routed_events(self) -> list[RoutedEvent]:
        return list(self._events)

    async def _handle(self, message: InboundMessage) -> None:
        event = await self._interpret(message)
        if event is None:
            return
        event_id = f"{self._params.encounter_key}/{message.sending_facility}/{message.control_id}"
        if (
            event.trigger is AdtTrigger.UPDATE
            and self._discharge is None
            and not self._recalled
            # Histories written before the recall existed replay without its activity.
            and self._patched(RECALL_CLOSED_PATCH)
        ):
            await self._recall_closed_discharge()
        diagnoses_before = self._diagnoses
        subscription, note = self._subscription_for(event)
        if (
            subscription is Subscription.DIAGNOSIS_UPDATE
            and self._closed_run_id
            and not await self._reviewer_forwards_late_update()
        ):
            self._diagnoses = diagnoses_before
            subscription, note = None, "A08 after the discharge exchange closed: dismissed"
        if subscription is None:
            self._events.append(
                RoutedEvent(
                    event_id=event_id,
                    trigger=event.trigger.value,
                    subscription=None,
                    destinations=[],
                    routing_version="",
                    note=note,
                )
            )
            return
        if subscription is Subscription.DIAGNOSIS_UPDATE:
            event = self._with_discharge_on_record(event)
        # Local activities since the patch: the routing answer and each hand-off to a queue
        # are still recorded (markers), but cost no activity task round trip through the
        # server. Both are safe to run again: routing reads the worker's file, and a queue
        # drops an event it already holds by its id.
        local = self._patched(LOCAL_ROUTING_PATCH)
        if local:
            routing = await workflow.execute_local_activity_method(
                DeliveryActivities.routing_for,
                subscription,
                start_to_close_timeout=timedelta(seconds=30),
                summary=f"Who subscribes to {subscription.value}",
            )
        else:
            routing = await workflow.execute_activity_method(
                DeliveryActivities.routing_for,
                subscription,
                start_to_close_timeout=timedelta(seconds=30),
                summary=f"Who subscribes to {subscription.value}",
            )
        for destination in routing.destinations:
            item = DeliveryItem(
                event_id=event_id,
                subscription=subscription,
                exchange_id=workflow.info().workflow_id,
                event=event,
                message_text=message.text,
                mapping_version=self._params.mapping_version,
                routing_version=routing.routing_version,
                policy=destination.policy,
            )
            request = EnqueueRequest(
                destination=destination.name,
                kind=destination.kind,
                patient_key=self._params.patient_key,
                item=item,
            )
            summary = f"Queue {subscription.value} for {destination.name}"
            if local:
                await workflow.execute_local_activity_method(
                    DeliveryActivities.enqueue_delivery,
                    request,
                    start_to_close_timeout=timedelta(seconds=60),
                    summary=summary,
                )
            else:
                await workflow.execute_activity_method(
                    DeliveryActivities.enqueue_delivery,
                    request,
                    start_to_close_timeout=timedelta(seconds=60),
                    summary=summary,
                )
        self._events.append(
            RoutedEvent(
                event_id=event_id,
                trigger=event.trigger.value,
                subscription=subscription.value,
                destinations=[d.name for d in routing.destinations],
                routing_version=routing.routing_version,
                note=note,
            )
        )
        self._set_status(
            {
                Subscription.DISCHARGE: "discharged",
                Subscription.CANCEL_DISCHARGE: "discharge-cancelled",
                Subscription.DIAGNOSIS_UPDATE: "diagnoses-updated",
            }[subscription]
        )

    def _subscription_for(self, event: AdtEvent) -> tuple[Subscription | None, str]:
        diagnoses = tuple((d.set_id, d.code, d.diagnosis_type) for d in event.diagnoses)
        if event.trigger is AdtTrigger.DISCHARGE:
            self._discharge = DischargeOnRecord.of(event)
            self._diagnoses = diagnoses
            return Subscription.DISCHARGE, ""
        if event.trigger is AdtTrigger.CANCEL_DISCHARGE:
            note = "" if self._discharge else "cancel for a discharge this exchange never saw"
            self._discharge = None
            return Subscription.CANCEL_DISCHARGE, note
        if self._discharge is None:
            return None, "A08 while not discharged: not part of discharge sync"
        if diagnoses == self._diagnoses:
            return None, "A08 without a diagnosis change"
        self._diagnoses = diagnoses
        return Subscription.DIAGNOSIS_UPDATE, ""

    async def _recall_closed_discharge(self) -> None:
        """An A08 in a run without a discharge: the encounter's previous exchange may have
        delivered one and closed after its quiet period (CAREWEAVE_DISCHARGE_CLOSE_AFTER_SECONDS).
        """
        self._recalled = True
        closed = await workflow.execute_activity_method(
            DischargeActivities.closed_discharge,
            ClosedDischargeRequest(
                workflow_id=workflow.info().workflow_id, run_id=workflow.info().run_id
            ),
            start_to_close_timeout=timedelta(seconds=30),
            summary="Recall the discharge of this encounter's closed exchange",
        )
        if closed is not None:
            self._discharge = closed.discharge
            self._diagnoses = closed.diagnoses
            self._closed_run_id = closed.run_id

    async def _reviewer_forwards_late_update(self) -> bool:
        """A diagnosis change after the exchange closed is not forwarded on its own: a
        person decides, so a late A08 is neither lost silently nor sent unseen."""
        workflow.logger.warning(
            "A08 with a diagnosis change for an encounter whose discharge exchange closed "
            "(run %s): waiting for a reviewer",
            self._closed_run_id,
        )
        decision = await self.ask_reviewer(
            ReviewReason.UPDATE_AFTER_CLOSE,
            "A08 for an encounter with no open discharge: it changes the diagnoses (DG1) of "
            f"a discharge whose exchange closed (run {self._closed_run_id})",
            actions={
                ReviewAction.APPROVE: "forward it to the diagnosis-update destinations; "
                "the FHIR Encounter stays finished",
                ReviewAction.REJECT: "dismiss it: nothing is sent",
            },
        )
        if decision.action is not ReviewAction.APPROVE:
            return False
        # Forwarded: the exchange is open again, later A08s follow without a review.
        self._closed_run_id = ""
        return True

    def _with_discharge_on_record(self, event: AdtEvent) -> AdtEvent:
        """The A08 as the FHIR mapping needs it: with the discharge this exchange delivered,
        so an A08 without PV1-45 keeps the Encounter finished with its end and disposition
        (a full PUT would drop them). MLLP destinations get the message as received."""
        assert self._discharge is not None
        on_record = self._discharge
        self._discharge = on_record.amended_by(event)
        return event.model_copy(update={"discharge_on_record": on_record})

    async def _interpret(self, message: InboundMessage) -> AdtEvent | None:
        return await self.until_accepted(
            lambda: workflow.execute_local_activity(
                interpret_adt,
                InterpretAdtInput(message=message),
                start_to_close_timeout=timedelta(seconds=30),
                summary="Parse the ADT event",
            ),
            refused_as=ADT_MESSAGE_INVALID,
            reason=ReviewReason.INVALID_MESSAGE,
            summary="The ADT message failed full validation",
            actions={
                ReviewAction.RETRY: "validate again (after the parser was fixed)",
                ReviewAction.REJECT: "drop this message from the exchange",
            },
        )

    def _set_status(self, status: str) -> None:
        self._status = status
        upsert_exchange_status(status, self._patched)
