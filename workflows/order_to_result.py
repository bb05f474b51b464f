"""Order-to-result, lab: one workflow per placer order number.

The story: an order (ORM^O01 / OML^O21) writes a ServiceRequest and starts the
result clock for its priority; results (ORU^R01) write one transaction of
DiagnosticReport + Observations + a work-queue Task; corrections update the same
resources; a cancel revokes the ServiceRequest. A result that arrives before its
order waits for it, then goes to a reviewer; so does a local code with no LOINC
mapping and a write the FHIR server refuses. The workflow stays open for a
correction window after the final result, then completes.

Workflow code is deterministic: every parse, mapping and FHIR write happens in
activities (activities/order_to_result.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

from workflows import search_attributes as sa
from workflows.exchange_search import (
    add_business_keys,
    coalesced_upserts,
    message_attributes,
    upsert_changed,
    upsert_exchange_start,
    upsert_exchange_status,
)
from workflows.message_trace import follow_message_trace, trace_base
from workflows.patches import RunPatches
from workflows.review import ReviewableWorkflow, refusal_of

with workflow.unsafe.imports_passed_through():
    from activities.order_to_result import (
        FHIR_REJECTED,
        LAB_MESSAGE_INVALID,
        EscalationInput,
        FhirActivities,
        FindOrderInput,
        InterpretInput,
        PublishOrderInput,
        PublishOutcome,
        PublishResultInput,
        find_service_request,
        interpret_lab_order,
        interpret_lab_result,
        publish_lab_result,
        publish_service_request,
        raise_escalation_task,
    )
    from mappings.order_to_result.concept_map import unmapped_observations
    from models.demographics import PatientRef, contradicting_identifiers
    from models.exchanges import OrderToResultInput
    from models.lab import LabOrder, LabResult
    from models.merge import PATIENT_MERGED_SIGNAL, PatientMergedNotice
    from models.messages import InboundMessage
    from models.review import (
        PatientMismatchContext,
        ReviewAction,
        ReviewReason,
        UnknownOrderContext,
        UnmappedCodeContext,
    )

EXCHANGE_NAME = "order-to-result"

_FHIR_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[FHIR_REJECTED, LAB_MESSAGE_INVALID],
)
# A FHIR write is tried once as a local activity, in the workflow task that decided it:
# no activity task to schedule, poll and complete, so half the durable steps per message.
# A write that fails or is slow (FHIR down or frozen) goes on as an activity, retried
# with backoff by the server and shown as pending in the UI, and frees the worker's
# workflow-task slot; the version fence makes a late local attempt harmless.
LAB_WRITES_LOCAL_FIRST = "lab-writes-local-first"
_LOCAL_WRITE_TIMEOUT = timedelta(seconds=10)
_LOCAL_WRITE_ONCE = RetryPolicy(maximum_attempts=1)
_T = TypeVar("_T")
_A = TypeVar("_A")


class OrderToResultSummary(BaseModel):
    status: str
    messages_processed: int
    duplicates_ignored: int
    resources_written: list[str]
    mapping_version: str
    overdue: bool


@workflow.defn
class OrderToResult(ReviewableWorkflow):
    @workflow.init
    def __init__(self, params: OrderToResultInput) -> None:
        super().__init__()
        self._params = params
        self._inbox: deque[InboundMessage] = deque()
        self._seen_messages: set[str] = set()
        self._duplicates = 0
        self._processed = 0
        self._order: LabOrder | None = None
        self._order_known_in_fhir = False
        self._held_results: list[InboundMessage] = []
        self._unknown_order_deadline: datetime | None = None
        self._sla_deadline: datetime | None = None
        self._close_deadline: datetime | None = None
        self._overdue = False
        self._status = "received"
        self._written: list[str] = []
        self._closing = False
        # Per report (InterpretedResult.report_keys): the version published last, or the last
        # critical one if any was, and whether it was critical. A correction's Task is
        # built knowing it, so a critical value is never silently downgraded.
        self._published_reports: dict[str, tuple[LabResult, bool]] = {}
        # Merges that retired a patient while this order waited (patient-merge tells it):
        # a result naming the survivor is then the order's patient's.
        self._merges: list[PatientMergedNotice] = []

    @workflow.run
    async def run(self, params: OrderToResultInput) -> OrderToResultSummary:
        self._patched = RunPatches()
        coalesced = coalesced_upserts(self._patched)
        upsert_exchange_start(EXCHANGE_NAME, params.facility, coalesced=coalesced)
        own_trace = trace_base()
        while not self._finished():
            follow_message_trace({}, own_trace)
            if not self._inbox:
                if not await self._wait_for_message_or_deadline():
                    continue
            message = self._inbox.popleft()
            if coalesced:
                upsert_changed(message_attributes(message.message_type, message.business_keys))
            else:
                workflow.upsert_search_attributes([sa.MESSAGE_TYPE.value_set(message.message_type)])
                add_business_keys(message.business_keys, self._patched)
            follow_message_trace(message.trace_context, own_trace)
            if message.message_type.startswith("ORU"):
                await self._handle_result(message)
            else:
                await self._handle_order(message)
            self._processed += 1
        if self._status in ("final", "corrected", "cancelled"):
            self._set_status("completed" if self._status != "cancelled" else "cancelled")
        return OrderToResultSummary(
            status=self._status,
            messages_processed=self._processed,
            duplicates_ignored=self._duplicates,
            resources_written=self._written,
            mapping_version=params.mapping_version,
            overdue=self._overdue,
        )

    # -- the gateway's signals -------------------------------------------------

    @workflow.signal
    def order_message(self, message: InboundMessage) -> None:
        self._accept(message)

    @workflow.signal
    def result_message(self, message: InboundMessage) -> None:
        self._accept(message)

    @workflow.signal(name=PATIENT_MERGED_SIGNAL)
    def patient_merged(self, notice: PatientMergedNotice) -> None:
        if notice in self._merges:
            return
        self._merges.append(notice)
        # Found by the survivor's number as well from now on.
        add_business_keys(notice.survivor_keys, self._patched)

    @workflow.query
    def status(self) -> str:
        return self._status

    @workflow.query
    def order(self) -> LabOrder | None:
        """The order this exchange holds (PHI: decoded only for signed-in reviewers)."""
        return self._order

    @workflow.query
    def resources_written(self) -> list[str]:
        """Logical FHIR ids this exchange wrote, in order (e.g. "DiagnosticReport/7")."""
        return list(self._written)

    def _accept(self, message: InboundMessage) -> None:
        # A resend (same sender + MSH-10) that slipped past the gateway's receipt
        # table (crash between commit and receipt) is dropped here.
        if message.dedup_key in self._seen_messages:
            self._duplicates += 1
            return
        self._seen_messages.add(message.dedup_key)
        self._inbox.append(message)

    # -- orders ----------------------------------------------------------------

    async def _handle_order(self, message: InboundMessage) -> None:
        interpreted = await self._run_activity(
            interpret_lab_order,
            InterpretInput(message=message, mapping_version=self._params.mapping_version),
            summary="Parse and validate the lab order",
        )
        if interpreted is None:
            return
        order = interpreted.order
        cancelling = order.is_cancel
        outcome = await self._publish(
            publish_service_request,
            PublishOrderInput(order=order, mapping_version=self._params.mapping_version),
            summary="Revoke the ServiceRequest" if cancelling else "Write the ServiceRequest",
        )
        if outcome is None:
            return
        self._order = order
        if cancelling:
            self._set_status("cancelled")
            self._sla_deadline = None
            self._start_close_window()
            return
        if self._status in ("received", "awaiting-order"):
            self._set_status("ordered")
        if self._sla_deadline is None and self._status == "ordered":
            sla = self._params.timing.sla_seconds_by_priority.get(order.priority or "routine")
            if sla is None:
                sla = self._params.timing.sla_seconds_by_priority["routine"]
            self._sla_deadline = workflow.now() + timedelta(seconds=sla)
            workflow.set_current_details(
                f"Waiting for the result of a {order.priority or 'routine'} order "
                f"until {self._sla_deadline.isoformat()}"
            )
        # Results that came before the order go first, in the order they arrived.
        self._unknown_order_deadline = None
        for held in reversed(self._held_results):
            self._inbox.appendleft(held)
        self._held_results.clear()

    # -- results ---------------------------------------------------------------

    async def _handle_result(self, message: InboundMessage) -> None:
        if self._order is None and not self._order_known_in_fhir:
            self._order_known_in_fhir = await workflow.execute_activity_method(
                find_service_request,
                FindOrderInput(
                    placer_order_number=self._params.placer_order_number,
                    placer_namespace=self._params.placer_namespace,
                    mapping_version=self._params.mapping_version,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_FHIR_RETRY,
                summary="Look for the order in FHIR (result came first)",
            )
            if not self._order_known_in_fhir:
                self._held_results.append(message)
                if self._unknown_order_deadline is None:
                    self._unknown_order_deadline = workflow.now() + timedelta(
                        seconds=self._params.timing.unknown_order_wait_seconds
                    )
                self._set_status("awaiting-order")
                workflow.set_current_details(
                    "Result held: its order has not arrived; review at "
                    f"{self._unknown_order_deadline.isoformat()}"
                )
                return
        await self._publish_result_message(message)

    async def _publish_result_message(self, message: InboundMessage) -> None:
        patient_checked = False  # a reviewer is asked once per message, not per retry
        while True:
            interpreted = await self._run_activity(
                interpret_lab_result,
                InterpretInput(message=message, mapping_version=self._params.mapping_version),
                summary="Parse the result and map local codes to LOINC",
            )
            if interpreted is None:
                return
            if not patient_checked:
                if not await self._same_patient_as_order(interpreted.results):
                    return
                patient_checked = True
            allow_unmapped = False
            if interpreted.unmapped_codes:
                decision = await self.ask_reviewer(
                    ReviewReason.UNMAPPED_CODE,
                    f"{len(interpreted.unmapped_codes)} local code(s) have no LOINC mapping "
                    f"in mapping {interpreted.mapping_version}",
                    details=tuple(interpreted.unmapped_codes),
                    actions={
                        ReviewAction.APPROVE: "publish with the local code only",
                        ReviewAction.RETRY: "map again (after the concept map was updated)",
                        ReviewAction.REJECT: "do not publish this result",
                    },
                    context=UnmappedCodeContext(
                        mapping_version=interpreted.mapping_version,
                        observations=unmapped_observations(
                            interpreted.results, interpreted.unmapped_codes
                        ),
                    ),
                )
                if decision.action is ReviewAction.RETRY:
                    continue
                if decision.action is ReviewAction.REJECT:
                    self._set_status("result-rejected")
                    return
                allow_unmapped = True
            break
        keys = interpreted.report_keys or [r.report_key for r in interpreted.results]
        for result, key in zip(interpreted.results, keys, strict=True):
            earlier = self._published_reports.get(key)
            outcome = await self._publish(
                publish_lab_result,
                PublishResultInput(
                    result=result,
                    mapping_version=interpreted.mapping_version,
                    allow_unmapped=allow_unmapped,
                    previous=earlier[0] if earlier else None,
                ),
                summary=(
                    "Write the corrected report (same resources, new version)"
                    if result.is_correction
                    else "Write DiagnosticReport, Observations and the review Task"
                ),
            )
            if outcome is not None:
                if earlier is None or outcome.critical or not earlier[1]:
                    self._published_reports[key] = (result, outcome.critical)
                self._after_result_published(result, interpreted.critical)

    async def _same_patient_as_order(self, results: list[LabResult]) -> bool:
        """False when a result names another patient than its order and the reviewer did
        not confirm it: nothing of the message is published then."""
        order = self._order
        if order is None:
            return True
        other = next(
            (
                r.patient
                for r in results
                if r.patient.is_other_patient_than(order.patient)
                and not self._names_the_survivor(order.patient, r)
            ),
            None,
        )
        if other is None:
            # Every PID-3 repetition of the same authority and type, not only the key one:
            # a sender that lists the MRN second must not hide another patient's MRN.
            # Checked before the patch call, like the one below: a run whose PIDs agree
            # records no marker.
            other = next(
                (
                    r.patient
                    for r in results
                    if contradicting_identifiers(order.person, r.person)
                    and not self._names_the_survivor(order.patient, r)
                    and self._patched("lab-mismatch-every-identifier")
                ),
                None,
            )
        # Checked before the patch call so runs without a mismatch record no marker and
        # histories recorded before the guard (none had a mismatch) replay unchanged.
        if other is None or not self._patched("lab-patient-mismatch-review"):
            return True
        decision = await self.ask_reviewer(
            ReviewReason.PATIENT_MISMATCH,
            "The result's patient identifier (PID-3) differs from its order's "
            "for the same assigning authority",
            actions={
                ReviewAction.REJECT: "do not publish this result (wrong patient)",
                ReviewAction.APPROVE: (
                    "publish under the order: only after confirming with the lab that "
                    "the result belongs to the order's patient"
                ),
            },
            context=PatientMismatchContext(order_patient=order.patient, result_patient=other),
        )
        if decision.action is ReviewAction.APPROVE:
            return True
        # The order stays open: its own patient's result may still come (or the SLA fires).
        self._set_status("result-rejected")
        return False

    def _names_the_survivor(self, order_patient: PatientRef, result: LabResult) -> bool:
        """The result names the record the order's patient was merged into (and nothing
        that contradicts it): the order's own patient under its surviving number."""
        for notice in self._merges:
            retired = PatientRef(
                identifier=notice.retired.value,
                assigning_authority=notice.retired.assigning_authority,
            )
            survivor = PatientRef(
                identifier=notice.survivor.value,
                assigning_authority=notice.survivor.assigning_authority,
            )
            if (
                order_patient.identifier.strip() == retired.identifier.strip()
                and not order_patient.is_other_patient_than(retired)
                and not result.patient.is_other_patient_than(survivor)
                and not contradicting_identifiers(notice.survivor_demographics, result.person)
            ):
                return True
        return False

    def _after_result_published(self, result: LabResult, critical: bool) -> None:
        if result.is_correction:
            self._set_status("corrected")
        elif result.result_status in ("F", "C", "A"):
            if self._status != "corrected":
                self._set_status("final")
        elif self._status not in ("final", "corrected"):
            self._set_status("preliminary")
        if self._status in ("final", "corrected"):
            self._sla_deadline = None
            self._start_close_window()
        workflow.logger.info(
            "result published (status %s, critical %s)", result.result_status, critical
        )

    # -- deadlines -------------------------------------------------------------

    async def _wait_for_message_or_deadline(self) -> bool:
        """Wait for the next message; on a deadline, act on it. True when a message is ready."""
        deadline = min(
            (
                d
                for d in (self._unknown_order_deadline, self._sla_deadline, self._close_deadline)
                if d is not None
            ),
            default=None,
        )
        timeout = None
        if deadline is not None:
            timeout = max((deadline - workflow.now()).total_seconds(), 0.001)
        try:
            await workflow.wait_condition(lambda: bool(self._inbox), timeout=timeout)
            return True
        except TimeoutError:
            pass
        now = workflow.now()
        if self._unknown_order_deadline is not None and now >= self._unknown_order_deadline:
            await self._review_unknown_order()
        elif self._sla_deadline is not None and now >= self._sla_deadline:
            await self._escalate_overdue()
        elif self._close_deadline is not None and now >= self._close_deadline:
            self._close_deadline = None
            self._closing = True
        return False

    async def _review_unknown_order(self) -> None:
        self._unknown_order_deadline = None
        decision = await self.ask_reviewer(
            ReviewReason.UNKNOWN_ORDER,
            f"{len(self._held_results)} result message(s) for an order never received",
            actions={
                ReviewAction.APPROVE: "publish the result without its order",
                ReviewAction.RETRY: "wait for the order again",
                ReviewAction.REJECT: "do not publish these results",
            },
            context=UnknownOrderContext(
                facility=self._params.facility,
                mapping_version=self._params.mapping_version,
                held_messages=tuple(held.text for held in self._held_results),
            ),
        )
        held, self._held_results = self._held_results, []
        if decision.action is ReviewAction.APPROVE:
            self._order_known_in_fhir = True
            for message in reversed(held):
                self._inbox.appendleft(message)
        elif decision.action is ReviewAction.RETRY:
            self._held_results = held
            self._unknown_order_deadline = workflow.now() + timedelta(
                seconds=self._params.timing.unknown_order_wait_seconds
            )
        else:
            self._set_status("result-rejected")
            self._start_close_window()

    async def _escalate_overdue(self) -> None:
        self._sla_deadline = None
        self._overdue = True
        self._set_status("overdue")
        assert self._order is not None
        await self._publish(
            raise_escalation_task,
            EscalationInput(
                order=self._order,
                reason="No final result within the SLA window",
                mapping_version=self._params.mapping_version,
            ),
            summary="Raise an escalation Task: result overdue",
        )
        workflow.set_current_details("Overdue: escalation Task raised; still waiting for result")

    # -- helpers ---------------------------------------------------------------

    def _finished(self) -> bool:
        return self._closing and not self._inbox

    def _start_close_window(self) -> None:
        self._close_deadline = workflow.now() + timedelta(
            seconds=self._params.timing.correction_window_seconds
        )

    def _set_status(self, status: str) -> None:
        self._status = status
        upsert_exchange_status(status, self._patched)

    async def _run_activity(
        self, activity: Callable[[_A], _T], arg: _A, *, summary: str
    ) -> _T | None:
        """Run a parse/map step; a message the full parser refuses goes to a reviewer."""
        return await self.until_accepted(
            lambda: workflow.execute_local_activity(
                activity,
                arg,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_FHIR_RETRY,
                summary=summary,
            ),
            refused_as=LAB_MESSAGE_INVALID,
            reason=ReviewReason.INVALID_MESSAGE,
            summary="The message failed full validation",
            actions={
                ReviewAction.RETRY: "validate again (after the mapping/parser was fixed)",
                ReviewAction.REJECT: "drop this message from the exchange",
            },
        )

    async def _publish(
        self,
        activity: Callable[[FhirActivities, _A], Awaitable[PublishOutcome]],
        arg: _A,
        *,
        summary: str,
    ) -> PublishOutcome | None:
        """Write to FHIR; a 4xx refusal is not retried but goes to a reviewer."""
        while True:
            try:
                outcome = await self._write(activity, arg, summary=summary)
                self._written.extend(outcome.resources)
                return outcome
            except (ActivityError, ApplicationError) as err:
                refusal = refusal_of(err, FHIR_REJECTED)
                if refusal is None:
                    raise
                decision = await self.ask_reviewer(
                    ReviewReason.FHIR_REJECTED,
                    f"The FHIR server refused the write: {refusal.message}",
                    actions={
                        ReviewAction.RETRY: "write again (after the server or data was fixed)",
                        ReviewAction.APPROVE: "continue without this write",
                        ReviewAction.REJECT: "stop here",
                    },
                )
                if decision.action is ReviewAction.RETRY:
                    continue
                if decision.action is ReviewAction.REJECT:
                    self._set_status("write-rejected")
                    self._start_close_window()
                return None

    async def _write(
        self,
        activity: Callable[[FhirActivities, _A], Awaitable[PublishOutcome]],
        arg: _A,
        *,
        summary: str,
    ) -> PublishOutcome:
        if self._patched(LAB_WRITES_LOCAL_FIRST):
            try:
                return await workflow.execute_local_activity_method(
                    activity,
                    arg,
                    start_to_close_timeout=_LOCAL_WRITE_TIMEOUT,
                    retry_policy=_LOCAL_WRITE_ONCE,
                    summary=summary,
                )
            except FailureError as err:
                if refusal_of(err, FHIR_REJECTED) is not None or isinstance(err, CancelledError):
                    raise
                # Unavailable, slow or failed otherwise: retried durably below.
        return await workflow.execute_activity_method(
            activity,
            arg,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_FHIR_RETRY,
            summary=summary,
        )
