"""Imaging order-to-result: one workflow per accession number, and the PACS poller.

The story: an imaging order (ORM^O01 / OMI^O23) writes the ServiceRequest and a worklist
entry; the modality reads it and sends the images to the PACS; when the study is stable
its headers are checked against the order's patient (PatientID, name, birth date: any
doubt waits for a reviewer, nothing is published before) and the ImagingStudy is written
with its DICOMweb Endpoint (and the order's encounter when the FHIR server knows its
visit); a late series updates it. The order's fulfilment Task goes in-progress with the
study. The report (ORU^R01 with the same accession) gets DiagnosticReport.imagingStudy,
completes the Task when final, and completes the exchange. A cancel removes
the worklist entry and revokes the ServiceRequest. A study no order claims waits
``unknown_order_wait_seconds`` for one, then goes to a reviewer, who may publish it
without an order for its own patient: the one Patient that holds the header's PatientID
and has its name (and birth date), looked up again when the approve comes; a later series
of that study follows it to the same Patient, any doubt goes back to a reviewer.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows import search_attributes as sa
from workflows.exchange_search import (
    add_business_keys,
    coalesced_upserts,
    message_attributes,
    upsert_changed,
    upsert_exchange_start,
    upsert_exchange_status,
)
from workflows.patches import RunPatches
from workflows.review import ReviewableWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.imaging_order import (
        PACS_REJECTED,
        FindStudyPatientInput,
        FollowFeedInput,
        ImagingActivities,
        PacsFeedActivities,
        PublishReportInput,
        PublishStudyInput,
        ReadStudyInput,
        Scheduled,
        ScheduleInput,
        StudyPatient,
        TrackFulfillmentInput,
        interpret_imaging_order,
    )
    from activities.order_to_result import (
        FHIR_REJECTED,
        LAB_MESSAGE_INVALID,
        InterpretInput,
        interpret_lab_result,
    )
    from adapters.hl7v2.imaging_messages import ImagingFields
    from mappings.imaging_order.fhir_imaging import context_mismatches
    from models.demographics import PatientRef
    from models.exchanges import ImagingOrderInput, PacsPollerInput
    from models.imaging import StudyHeader
    from models.imaging_events import StudyStable
    from models.lab import LabOrder
    from models.messages import InboundMessage
    from models.review import (
        PatientMismatchContext,
        ReviewAction,
        ReviewDecision,
        ReviewReason,
        UnknownOrderContext,
        UnorderedStudyContext,
    )

EXCHANGE_NAME = "imaging-order"
_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[FHIR_REJECTED, LAB_MESSAGE_INVALID, PACS_REJECTED],
)
_TIMEOUT = timedelta(seconds=60)
# Runs from here on keep the order's fulfilment Task (in-progress with the study, completed
# with the final report) and give the ImagingStudy the order's encounter; runs started
# before go on without either.
FULFILLMENT_TASK_PATCH = "imaging-fulfillment-task"
# Runs from here on let the reviewer of a study no order claims publish it for its own
# patient (found by PatientID, confirmed by name); runs started before offer only reject.
UNORDERED_STUDY_PATCH = "imaging-unordered-study-approve"
# OBR-25 result status (HL7 table 0123): final and corrected reports finish the order.
_FINAL_REPORT = ("F", "C")


class ImagingOrderSummary(BaseModel):
    status: str
    resources_written: list[str]
    studies_published: int


@workflow.defn
class ImagingOrder(ReviewableWorkflow):
    @workflow.init
    def __init__(self, params: ImagingOrderInput) -> None:
        super().__init__()
        self._params = params
        self._messages: deque[InboundMessage] = deque()
        self._studies: deque[StudyStable] = deque()
        self._seen: set[str] = set()
        self._order: LabOrder | None = None
        self._imaging: ImagingFields | None = None
        self._scheduled: Scheduled | None = None
        self._study_reference: str | None = None
        # The Patient a reviewer published a study without an order for.
        self._unordered_subject: str | None = None
        self._written: list[str] = []
        self._studies_published = 0
        self._status = "received"

    @workflow.run
    async def run(self, params: ImagingOrderInput) -> ImagingOrderSummary:
        self._patched = RunPatches()
        coalesced = coalesced_upserts(self._patched)
        upsert_exchange_start(EXCHANGE_NAME, params.facility, coalesced=coalesced)
        while self._status not in ("completed", "cancelled", "rejected"):
            if (
                self._order is None
                and self._unordered_subject is None
                and self._studies
                and not self._messages
            ):
                # A study came first: wait for its order, then a reviewer decides.
                if not await self._wait_for_order():
                    continue
            await workflow.wait_condition(lambda: bool(self._messages or self._studies))
            if self._messages:
                message = self._messages.popleft()
                if coalesced:
                    upsert_changed(message_attributes(message.message_type, message.business_keys))
                else:
                    add_business_keys(message.business_keys, self._patched)
                    workflow.upsert_search_attributes(
                        [sa.MESSAGE_TYPE.value_set(message.message_type)]
                    )
                if message.message_type.startswith("ORU"):
                    await self._handle_report(message)
                else:
                    await self._handle_order(message)
            elif self._order is not None:
                await self._handle_study(self._studies.popleft())
            elif self._unordered_subject is not None:
                await self._handle_unordered_study(self._studies.popleft())
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ImagingOrderSummary(
            status=self._status,
            resources_written=self._written,
            studies_published=self._studies_published,
        )

    # -- signals ---------------------------------------------------------------

    @workflow.signal
    def order_message(self, message: InboundMessage) -> None:
        self._accept(message)

    @workflow.signal
    def report_message(self, message: InboundMessage) -> None:
        self._accept(message)

    @workflow.signal
    def study_stable(self, change: StudyStable) -> None:
        key = f"pacs|{change.change_seq}"
        if key not in self._seen:
            self._seen.add(key)
            self._studies.append(change)

    @workflow.query
    def status(self) -> str:
        return self._status

    @workflow.query
    def resources_written(self) -> list[str]:
        return list(self._written)

    def _accept(self, message: InboundMessage) -> None:
        if message.dedup_key not in self._seen:
            self._seen.add(message.dedup_key)
            self._messages.append(message)

    def _set_status(self, status: str) -> None:
        self._status = status
        upsert_exchange_status(status, self._patched)

    # -- the story -------------------------------------------------------------

    async def _wait_for_order(self) -> bool:
        """True when an order (or a message) came in time; else a reviewer decided."""
        self._set_status("awaiting-order")
        try:
            await workflow.wait_condition(
                lambda: bool(self._messages),
                timeout=timedelta(seconds=self._params.unknown_order_wait_seconds),
            )
            return True
        except TimeoutError:
            pass
        if self._patched(UNORDERED_STUDY_PATCH):
            await self._handle_unordered_study(self._studies.popleft())
            return False
        decision = await self.ask_reviewer(
            ReviewReason.UNKNOWN_ORDER,
            "A study arrived in the PACS for an accession number no order has",
            actions={ReviewAction.REJECT: "Leave the study unpublished and close"},
            context=UnknownOrderContext(
                facility=self._params.facility, mapping_version=self._params.mapping_version
            ),
        )
        if decision.action is ReviewAction.REJECT:
            self._studies.clear()
            self._set_status("rejected")
        return False

    async def _handle_unordered_study(self, change: StudyStable) -> None:
        """A study no order claims: published without basedOn for the study's own patient
        once a reviewer approves, or for the Patient a reviewer already approved it for;
        never for a Patient found differently than when the reviewer looked."""
        refusal = ""
        while True:
            header = await self._read_study(change)
            found = await self._find_study_patient(header)
            if (
                self._unordered_subject is not None
                and found.subject_reference == self._unordered_subject
            ):
                await self._publish_unordered_study(header, self._unordered_subject)
                return
            decision = await self._ask_about_unordered_study(header, found, refusal)
            if decision.action is ReviewAction.REJECT:
                self._studies.clear()
                if self._unordered_subject is None:
                    self._set_status("rejected")
                return
            if decision.action is not ReviewAction.APPROVE:
                refusal = ""
                continue
            # The reviewer saw one Patient; registration may have changed since (another
            # holder of the identifier, a merge): publish only to the one they approved.
            again = await self._find_study_patient(header)
            if again.subject_reference and again.subject_reference == found.subject_reference:
                await self._publish_unordered_study(header, again.subject_reference)
                return
            refusal = (
                "The approve was not carried out: the study's patient is no longer the "
                "Patient the review named"
            )

    async def _ask_about_unordered_study(
        self, header: StudyHeader, found: StudyPatient, refusal: str
    ) -> ReviewDecision:
        summary = "A study arrived in the PACS for an accession number no order has"
        actions = {ReviewAction.REJECT: "Leave the study unpublished"}
        refused: dict[ReviewAction, str] = {}
        if found.subject_reference:
            actions[ReviewAction.APPROVE] = (
                "Publish the study without an order, for the one Patient its PatientID and "
                "name identify"
            )
        else:
            summary += f"; approve is not offered: {found.not_found}"
            refused[ReviewAction.APPROVE] = (
                f"{found.not_found}; the study is published only for a Patient its header "
                "identifies exactly (register the patient, then look again)"
            )
            actions[ReviewAction.RETRY] = "Look the study's patient up again"
        return await self.ask_reviewer(
            ReviewReason.UNKNOWN_ORDER,
            f"{refusal}. {summary}" if refusal else summary,
            actions=actions,
            refused_actions=refused,
            context=UnorderedStudyContext(
                study_instance_uid=header.study_instance_uid,
                study_patient=_header_patient(header),
                number_of_series=len(header.series),
                number_of_instances=header.number_of_instances,
                subject_reference=found.subject_reference,
                patient_not_found=found.not_found,
            ),
        )

    async def _find_study_patient(self, header: StudyHeader) -> StudyPatient:
        return await workflow.execute_activity_method(
            ImagingActivities.find_study_patient,
            FindStudyPatientInput(
                header=header, lab_mapping_version=self._params.lab_mapping_version
            ),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary="Find the Patient the study's header names",
        )

    async def _read_study(self, change: StudyStable) -> StudyHeader:
        return await workflow.execute_activity_method(
            ImagingActivities.read_imaging_study,
            ReadStudyInput(study_instance_uid=change.study_instance_uid),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary="Read the study's headers (WADO-RS metadata)",
        )

    async def _publish_unordered_study(self, header: StudyHeader, subject_reference: str) -> None:
        published = await workflow.execute_activity_method(
            ImagingActivities.publish_imaging_study,
            PublishStudyInput(
                header=header,
                accession_number=header.accession_number,
                # The PACS names no issuer of the accession (the order would have).
                accession_issuer="",
                subject_reference=subject_reference,
                service_request_reference=None,
                mapping_version=self._params.mapping_version,
            ),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary="Write the ImagingStudy (no order) and its DICOMweb Endpoint",
        )
        self._written += [r for r in published.resources if r not in self._written]
        self._study_reference = next(
            (r for r in published.resources if r.startswith("ImagingStudy/")), None
        )
        self._unordered_subject = subject_reference
        self._studies_published += 1
        self._set_status("imaged")

    async def _handle_order(self, message: InboundMessage) -> None:
        interpreted = await workflow.execute_local_activity(
            interpret_imaging_order,
            InterpretInput(message=message, mapping_version=self._params.mapping_version),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary="Parse the imaging order",
        )
        order = interpreted.order
        scheduled = await workflow.execute_activity_method(
            ImagingActivities.schedule_imaging_order,
            ScheduleInput(
                order=order,
                imaging=interpreted.imaging,
                mapping_version=self._params.mapping_version,
                lab_mapping_version=self._params.lab_mapping_version,
                worklist_name=self._params.accession_key,
            ),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary="Revoke the order and remove its worklist entry"
            if order.is_cancel
            else "Write the ServiceRequest and the worklist entry",
        )
        self._written += [r for r in scheduled.resources if r not in self._written]
        self._order, self._imaging = order, interpreted.imaging
        if order.is_cancel:
            self._set_status("cancelled")
            return
        self._scheduled = scheduled
        self._set_status("scheduled")

    async def _handle_study(self, change: StudyStable) -> None:
        assert self._order is not None and self._imaging is not None
        header = await workflow.execute_activity_method(
            ImagingActivities.read_imaging_study,
            ReadStudyInput(study_instance_uid=change.study_instance_uid),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary="Read the study's headers (WADO-RS metadata)",
        )
        mismatches = context_mismatches(header, self._order.patient)
        if mismatches:
            decision = await self.ask_reviewer(
                ReviewReason.PATIENT_MISMATCH,
                "The study's DICOM headers name another patient than its order: "
                + ", ".join(mismatches),
                actions={
                    ReviewAction.APPROVE: "Publish the study for the order's patient",
                    ReviewAction.REJECT: "Do not publish this study",
                },
                context=PatientMismatchContext(
                    order_patient=self._order.patient, result_patient=_header_patient(header)
                ),
            )
            if decision.action is not ReviewAction.APPROVE:
                return
        await self._publish_study(header)

    async def _publish_study(self, header: StudyHeader) -> None:
        assert self._scheduled is not None and self._order is not None
        assert self._imaging is not None
        tracked = self._patched(FULFILLMENT_TASK_PATCH)
        published = await workflow.execute_activity_method(
            ImagingActivities.publish_imaging_study,
            PublishStudyInput(
                header=header,
                accession_number=self._imaging.accession_number,
                accession_issuer=self._order.placer_namespace,
                subject_reference=self._scheduled.subject_reference,
                service_request_reference=self._scheduled.service_request_reference or None,
                mapping_version=self._params.mapping_version,
                visit_number=self._imaging.visit_number if tracked else "",
            ),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary="Write the ImagingStudy and its DICOMweb Endpoint",
        )
        self._written += [r for r in published.resources if r not in self._written]
        self._study_reference = next(
            (r for r in published.resources if r.startswith("ImagingStudy/")), None
        )
        self._studies_published += 1
        if tracked and self._study_reference is not None:
            await self._track_fulfillment("in-progress", [self._study_reference])
        self._set_status("imaged")

    async def _track_fulfillment(self, status: str, outputs: list[str]) -> None:
        """The order's fulfilment Task; nothing for a study no ServiceRequest was written for."""
        assert self._scheduled is not None and self._order is not None
        assert self._imaging is not None
        if not self._scheduled.service_request_reference:
            return
        tracked = await workflow.execute_activity_method(
            ImagingActivities.track_imaging_fulfillment,
            TrackFulfillmentInput(
                accession_number=self._imaging.accession_number,
                accession_issuer=self._order.placer_namespace,
                status=status,
                service_request_reference=self._scheduled.service_request_reference,
                subject_reference=self._scheduled.subject_reference,
                outputs=outputs,
                mapping_version=self._params.mapping_version,
            ),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary=f"Fulfilment Task of the order: {status}",
        )
        self._written += [r for r in tracked.resources if r not in self._written]

    async def _handle_report(self, message: InboundMessage) -> None:
        interpreted = await workflow.execute_local_activity(
            interpret_lab_result,
            InterpretInput(message=message, mapping_version=self._params.lab_mapping_version),
            start_to_close_timeout=_TIMEOUT,
            retry_policy=_RETRY,
            summary="Parse the imaging report",
        )
        if self._study_reference is None:
            # The report came before the study was published: hold it until then.
            await workflow.wait_condition(
                lambda: bool(self._studies) or self._study_reference is not None
            )
            while self._studies and self._study_reference is None and self._order is not None:
                await self._handle_study(self._studies.popleft())
        reports: list[str] = []
        for result in interpreted.results:
            published = await workflow.execute_activity_method(
                ImagingActivities.publish_imaging_report,
                PublishReportInput(
                    result=result,
                    lab_mapping_version=self._params.lab_mapping_version,
                    imaging_study_reference=self._study_reference,
                ),
                start_to_close_timeout=_TIMEOUT,
                retry_policy=_RETRY,
                summary="Write the report, linked to its ImagingStudy",
            )
            self._written += [r for r in published.resources if r not in self._written]
            reports += [r for r in published.resources if r.startswith("DiagnosticReport/")]
        if (
            self._order is not None
            and self._scheduled is not None
            and self._patched(FULFILLMENT_TASK_PATCH)
        ):
            final = any(result.result_status in _FINAL_REPORT for result in interpreted.results)
            outputs = [r for r in (self._study_reference, *reports) if r is not None]
            await self._track_fulfillment("completed" if final else "in-progress", outputs)
        self._set_status("completed")


def _header_patient(header: StudyHeader) -> PatientRef:
    return PatientRef(
        identifier=header.patient_id,
        assigning_authority=header.patient_id_issuer,
        family_name=header.patient_family_name,
        given_name=header.patient_given_name,
        birth_date=header.patient_birth_date,
        sex=header.patient_sex,
    )


@workflow.defn
class PacsChangePoller:
    """Follows Orthanc's change feed for ever: each StableStudy is announced to its imaging
    exchange (signal-with-start). Its position is its state and goes across
    continue-as-new, so a restart of Careweave or Orthanc neither misses nor repeats."""

    @workflow.run
    async def run(self, params: PacsPollerInput) -> None:
        position = params.position
        for _ in range(params.polls_per_run):
            followed = await workflow.execute_activity_method(
                PacsFeedActivities.follow_pacs_changes,
                FollowFeedInput(position=position),
                start_to_close_timeout=_TIMEOUT,
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                summary="Read the PACS change feed",
            )
            if followed.position != position:
                position = followed.position
                continue
            await workflow.sleep(timedelta(seconds=params.poll_seconds))
        workflow.continue_as_new(params.model_copy(update={"position": position}))
