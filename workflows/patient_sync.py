"""Patient-sync: one patient's person information reaches the FHIR Patient, in order.

ADT^A28 (add person information) and ^A31 (update person information) of one patient
(PID-3 with its assigning authority) signal ``patient-sync/<facility>/<patient key>``.
The workflow applies them one at a time, in arrival order: parse and map (a local
activity), then create the Patient or merge the message into it without erasing what
other sources wrote (activities/patient_sync.py). A message the parser refuses, or a
write the FHIR server refuses, waits for a reviewer: nothing is dropped unseen. After a
quiet period (close_after_seconds) the exchange completes; the next message starts a
new run under the same id.

Workflow code is deterministic: every parse, mapping and FHIR call is an activity.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.exchange_search import upsert_exchange_status
from workflows.inbox import MessageInbox
from workflows.patches import RunPatches
from workflows.review import ReviewableWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.patient_sync import (
        PATIENT_WRITE_REJECTED,
        PERSON_MESSAGE_INVALID,
        InterpretPersonInput,
        PatientWritten,
        WritePatientInput,
        interpret_person_message,
        write_patient,
    )
    from mappings.patient_sync.fhir_patient import PatientChanges
    from models.exchanges import PatientSyncInput
    from models.messages import InboundMessage
    from models.person import AppliedMessage, PatientSyncSummary
    from models.review import ReviewAction, ReviewReason

EXCHANGE_NAME = "patient-sync"

# FHIR outages and version conflicts are retried with backoff, as long as they last; a
# refusal (4xx) or an unreadable message goes to a reviewer instead.
_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[PATIENT_WRITE_REJECTED, PERSON_MESSAGE_INVALID],
)


@workflow.defn
class PatientSync(ReviewableWorkflow):
    @workflow.init
    def __init__(self, params: PatientSyncInput) -> None:
        super().__init__()
        self._params = params
        self._inbox = MessageInbox()
        self._applied: list[AppliedMessage] = []
        self._status = "received"

    @workflow.run
    async def run(self, params: PatientSyncInput) -> PatientSyncSummary:
        self._patched = RunPatches()
        await self._inbox.serve(
            params.close_after_seconds,
            self._apply,
            lambda: f"Status {self._status}; open {params.close_after_seconds:.0f} s for more",
            patched=self._patched,
        )
        return PatientSyncSummary(status=self._status, applied=list(self._applied))

    @workflow.signal
    def person_message(self, message: InboundMessage) -> None:
        self._inbox.accept(message)

    @workflow.query
    def status(self) -> str:
        return self._status

    @workflow.query
    def applied_messages(self) -> list[AppliedMessage]:
        return list(self._applied)

    async def _apply(self, message: InboundMessage) -> None:
        changes = await self._interpret(message)
        written = await self._write(changes) if changes is not None else None
        self._applied.append(
            AppliedMessage(
                control_id=message.control_id,
                sending_facility=message.sending_facility,
                message_type=message.message_type,
                outcome=written.outcome if written else "dismissed",
                patient=written.patient if written else "",
                version_conflicts=written.version_conflicts if written else 0,
            )
        )
        self._set_status(written.outcome if written else "dismissed")

    async def _interpret(self, message: InboundMessage) -> PatientChanges | None:
        return await self.until_accepted(
            lambda: workflow.execute_local_activity(
                interpret_person_message,
                InterpretPersonInput(message=message, mapping_version=self._params.mapping_version),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
                summary="Parse the PID and map it to Patient changes",
            ),
            refused_as=PERSON_MESSAGE_INVALID,
            reason=ReviewReason.INVALID_MESSAGE,
            summary="The person update could not be read",
            actions={
                ReviewAction.RETRY: "read it again (after the parser or mapping was fixed)",
                ReviewAction.REJECT: "dismiss this message: the Patient is not changed",
            },
        )

    async def _write(self, changes: PatientChanges) -> PatientWritten | None:
        return await self.until_accepted(
            lambda: workflow.execute_activity_method(
                write_patient,
                WritePatientInput(changes=changes),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=_RETRY,
                summary="Create the Patient, or merge the message into it",
            ),
            refused_as=PATIENT_WRITE_REJECTED,
            reason=ReviewReason.FHIR_REJECTED,
            summary="The FHIR server refused the Patient write",
            actions={
                ReviewAction.RETRY: "write again (after the server or data was fixed)",
                ReviewAction.REJECT: "dismiss this message: the Patient is not changed",
            },
        )

    def _set_status(self, status: str) -> None:
        self._status = status
        upsert_exchange_status(status, self._patched)
