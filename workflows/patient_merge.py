"""Patient-merge: registration merged two patient records; every system ends up pointing at
the survivor, and a merge that may join two people waits for a person.

ADT^A40 (and A18, A34, A35, A36) of one surviving patient signal
``patient-merge/<authority>/<patient key>``, A24 (link) and A37 (unlink) too; messages are
handled one at a time, in arrival order, and the merges of one message in message order.
For each merge: weigh the two records (the PID against the retired record the FHIR server
holds); a score below the match threshold, a birth date or sex conflict, or a retired
record never seen goes to a reviewer before anything is written. Then the identity index
records the merge, the two Patients are merged ($merge semantics), and every resource that
referred to the retired Patient is re-pointed a page at a time, each step with its
Provenance. A rejected merge writes nothing and the review history keeps why. A merge
applied (or recorded in the index) is then announced as an ADT^A40 to the destinations
subscribed to it, on the survivor's per-patient delivery queue (workflows/merge_announcements.py),
behind that patient's earlier events; runs from before carry no ``merge-delivery`` marker.

Workflow code is deterministic: every read, score and write is an activity.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.exchange_search import upsert_exchange_status
from workflows.inbox import MessageInbox
from workflows.merge_announcements import (
    MERGE_DELIVERY_PATCH,
    MERGE_IN_FLIGHT_PATCH,
    announce,
    merge_event_id,
)
from workflows.patches import RunPatches
from workflows.review import ReviewableWorkflow

with workflow.unsafe.imports_passed_through():
    from activities.merge_announcements import AnnouncementActivities, SurvivorQueueKeyInput
    from activities.merge_notices import OpenExchangeNotices, TellOpenExchangesInput
    from activities.patient_merge import (
        IDENTITY_CHANGE_REFUSED,
        IDENTITY_MESSAGE_INVALID,
        MERGE_WRITE_REJECTED,
        AssessMergeInput,
        InterpretedIdentity,
        InterpretIdentityInput,
        MergeAssessment,
        MergeRecordsInput,
        RecordIdentityInput,
        RepointPageInput,
        assess_merge,
        interpret_identity_message,
        link_pair,
        merge_patient_records,
        record_identity_change,
        repoint_references_page,
    )
    from models.exchanges import PatientMergeInput
    from models.merge import (
        AnnouncedMerge,
        LinkMessage,
        MergeAnnouncement,
        MergeMessage,
        MergeOutcome,
        PatientMerge,
    )
    from models.messages import InboundMessage
    from models.patient_match import MatchDecision
    from models.review import MergeReviewContext, ReviewAction, ReviewReason

EXCHANGE_NAME = "patient-merge"
# Pages of one resource type re-pointed before the exchange says something is wrong: a
# server that keeps answering the same page would otherwise loop for ever.
MAX_PAGES_PER_TYPE = 1000

_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[
        IDENTITY_MESSAGE_INVALID,
        MERGE_WRITE_REJECTED,
        IDENTITY_CHANGE_REFUSED,
    ],
)


@workflow.defn
class PatientMergeExchange(ReviewableWorkflow):
    @workflow.init
    def __init__(self, params: PatientMergeInput) -> None:
        super().__init__()
        self._params = params
        self._inbox = MessageInbox()
        self._outcomes: list[MergeOutcome] = []
        # (MSH-10, MRG position) -> the merge as announced downstream, for its undo.
        self._announced: dict[tuple[str, int], AnnouncedMerge] = {}
        self._status = "received"

    @workflow.run
    async def run(self, params: PatientMergeInput) -> list[MergeOutcome]:
        self._patched = RunPatches()
        await self._inbox.serve(
            params.close_after_seconds,
            self._apply,
            lambda: f"Status {self._status}; open {params.close_after_seconds:.0f} s for more",
            patched=self._patched,
        )
        return list(self._outcomes)

    @workflow.signal
    def identity_message(self, message: InboundMessage) -> None:
        self._inbox.accept(message)

    @workflow.query
    def status(self) -> str:
        return self._status

    @workflow.query
    def merge_outcomes(self) -> list[MergeOutcome]:
        return list(self._outcomes)

    @workflow.query
    def announced_merge(self, control_id: str, merge_index: int) -> AnnouncedMerge | None:
        """The merge as announced downstream (PHI: a codec-encrypted payload), so its undo
        announces an A37 on the same queues; None when it was not announced."""
        return self._announced.get((control_id, merge_index))

    # -- one message ---------------------------------------------------------------------

    async def _apply(self, message: InboundMessage) -> None:
        interpreted = await self._interpret(message)
        if interpreted is None:
            self._record(message, 0, "dismissed", "the message could not be read")
            return
        read = interpreted.message
        if isinstance(read, LinkMessage):
            await self._link(message, read)
            return
        for index, merge in enumerate(read.merges):
            await self._merge(message, read, index, merge)

    async def _interpret(self, message: InboundMessage) -> InterpretedIdentity | None:
        return await self.until_accepted(
            lambda: workflow.execute_local_activity(
                interpret_identity_message,
                InterpretIdentityInput(message=message),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
                summary="Read the merge or link message",
            ),
            refused_as=IDENTITY_MESSAGE_INVALID,
            reason=ReviewReason.INVALID_MESSAGE,
            summary="The merge message could not be read",
            actions={
                ReviewAction.RETRY: "read it again (after the reader was fixed)",
                ReviewAction.REJECT: "dismiss this message: nothing is merged",
            },
        )

    async def _link(self, message: InboundMessage, read: LinkMessage) -> None:
        first, second = link_pair(read)
        await self._record_identity(message, read.trigger.value, first, second, "careweave", "")
        self._record(message, 0, "linked" if read.trigger.value == "A24" else "unlinked")

    # -- one merge -----------------------------------------------------------------------

    async def _merge(
        self, message: InboundMessage, read: MergeMessage, index: int, merge: PatientMerge
    ) -> None:
        if merge.retired is None:
            # An account merge (A35): Careweave writes no Account, so nothing changes here.
            self._record(message, index, "not-applicable", "account merge: no patient retired")
            return
        assessment = await self.until_accepted(
            lambda: workflow.execute_activity_method(
                assess_merge,
                AssessMergeInput(merge=merge, mapping_version=self._params.mapping_version),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=_RETRY,
                summary="Find both records and weigh how alike they are",
            ),
            refused_as=MERGE_WRITE_REJECTED,
            reason=ReviewReason.FHIR_REJECTED,
            summary="The FHIR server refused a read or write of the merge",
            actions={
                ReviewAction.RETRY: "try again (after the records were fixed)",
                ReviewAction.REJECT: "dismiss this merge: nothing is merged",
            },
        )
        if assessment is None:
            self._record(message, index, "dismissed", "the records could not be read")
            return
        if assessment.already_merged:
            self._record(message, index, "already-merged")
            return
        actor, reason = "careweave", read.event_reason or f"ADT^{read.trigger.value}"
        doubts = merge_doubts(assessment)
        if doubts:
            self._set_status("awaiting-review")
            decision = await self.ask_reviewer(
                ReviewReason.UNCERTAIN_MERGE,
                f"Merge of two records needs a person: {'; '.join(doubts)}",
                actions={
                    ReviewAction.APPROVE: "they are one person: merge them",
                    ReviewAction.REJECT: "not one person: merge nothing, send nothing",
                },
                context=MergeReviewContext(
                    trigger=read.trigger.value,
                    survivor=merge.survivor,
                    retired=merge.retired,
                    survivor_patient=assessment.survivor_patient,
                    retired_patient=assessment.retired_patient,
                    score=assessment.score,
                    doubts=tuple(doubts),
                ),
            )
            if decision.action is not ReviewAction.APPROVE:
                self._record(message, index, "rejected", "a reviewer rejected the merge")
                self._set_status("merge-rejected")
                return
            actor, reason = decision.reviewer, decision.reason
        event = await self._record_identity(
            message, read.trigger.value, merge.survivor, merge.retired, actor, reason
        )
        if not assessment.retired_patient:
            # The index knows both now; the FHIR server never had the retired record (other
            # systems may have: the merge is announced all the same).
            await self._tell_open_exchanges(merge)
            await self._announce(message, read, index, merge)
            self._record(
                message,
                index,
                "recorded",
                "no FHIR record of the retired patient",
                index_event=event,
            )
            self._set_status("merged")
            return
        provenances = await self._merge_in_fhir(message, index, assessment, reason)
        await self._tell_open_exchanges(merge)
        await self._announce(message, read, index, merge)
        self._record(message, index, "merged", provenances=provenances, index_event=event)
        self._set_status("merged")

    async def _announce(
        self, message: InboundMessage, read: MergeMessage, index: int, merge: PatientMerge
    ) -> None:
        """Queue the A40 for its subscribers on the survivor's queues: the exchange's own
        patient key (the pseudonym discharge sync keys that patient's queues on) for the
        PATIENT group the exchange was keyed on, that survivor's own for any other group."""
        if not self._patched(MERGE_DELIVERY_PATCH):
            return
        patient_key = self._params.patient_key
        if index > 0:
            patient_key = await workflow.execute_activity_method(
                AnnouncementActivities.survivor_queue_key,
                SurvivorQueueKeyInput(merge=merge, sending_facility=message.sending_facility),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
                summary="The survivor's per-patient delivery key",
            )
        retired_key: str | None = None
        if self._patched(MERGE_IN_FLIGHT_PATCH):
            # The merged-away record's queues hand what they hold to the survivor's first.
            retired_key = await workflow.execute_activity_method(
                AnnouncementActivities.retired_queue_key,
                SurvivorQueueKeyInput(merge=merge, sending_facility=message.sending_facility),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
                summary="The merged-away patient's per-patient delivery key",
            )
        announced = AnnouncedMerge(
            patient_key=patient_key,
            event_id=merge_event_id(
                patient_key, message.sending_facility, message.control_id, index
            ),
            announcement=MergeAnnouncement(
                trigger="A40",
                merge=merge,
                # The message's event time when it gave one: every attempt sends the same.
                message_time=read.event_time or workflow.now(),
                event_reason=read.event_reason,
                operator_id=read.operator_id,
            ),
        )
        await announce(
            announced.announcement,
            patient_key=announced.patient_key,
            event_id=announced.event_id,
            mapping_version=self._params.mapping_version,
            retired_patient_key=retired_key,
        )
        self._announced[(message.control_id, index)] = announced

    async def _tell_open_exchanges(self, merge: PatientMerge) -> None:
        """An order of the retired patient still waiting for its result takes one that names
        the survivor as its own patient's (runs from before carry no marker)."""
        if not self._patched(MERGE_IN_FLIGHT_PATCH):
            return
        await workflow.execute_activity_method(
            OpenExchangeNotices.tell_open_exchanges,
            TellOpenExchangesInput(merge=merge, merge_exchange=workflow.info().workflow_id),
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
            summary="Tell the retired patient's open exchanges who survives",
        )

    async def _merge_in_fhir(
        self, message: InboundMessage, index: int, assessment: MergeAssessment, reason: str
    ) -> tuple[str, ...]:
        step = _StepTags(workflow.info().workflow_id, message, index)
        patients = await workflow.execute_activity_method(
            merge_patient_records,
            MergeRecordsInput(
                survivor_patient=assessment.survivor_patient,
                retired_patient=assessment.retired_patient,
                mapping_version=self._params.mapping_version,
                reason=reason,
                step_tag=step.tag("patients"),
            ),
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
            summary="Merge the two Patients ($merge) with their Provenance",
        )
        provenances = [patients.provenance]
        for resource_type in assessment.searched_types:
            for page in range(MAX_PAGES_PER_TYPE):
                workflow.set_current_details(f"Re-pointing {resource_type}, page {page + 1}")
                done = await workflow.execute_activity_method(
                    repoint_references_page,
                    RepointPageInput(
                        survivor_patient=assessment.survivor_patient,
                        retired_patient=assessment.retired_patient,
                        resource_type=resource_type,
                        mapping_version=self._params.mapping_version,
                        reason=reason,
                        step_tag=step.tag(f"{resource_type}-{page}"),
                    ),
                    start_to_close_timeout=timedelta(minutes=5),
                    heartbeat_timeout=timedelta(seconds=30),
                    retry_policy=_RETRY,
                    summary=f"Re-point {resource_type} references to the survivor",
                )
                if done.provenance:
                    provenances.append(done.provenance)
                if not done.more:
                    break
        workflow.set_current_details("")
        return tuple(provenances)

    async def _record_identity(
        self,
        message: InboundMessage,
        trigger: str,
        first: object,
        second: object,
        actor: str,
        reason: str,
    ) -> int:
        recorded = await workflow.execute_activity_method(
            record_identity_change,
            RecordIdentityInput.model_validate(
                {
                    "trigger": trigger,
                    "first": first,
                    "second": second,
                    "actor": actor,
                    "reason": reason,
                    "sending_facility": message.sending_facility,
                    "control_id": message.control_id,
                    "exchange": workflow.info().workflow_id,
                }
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_RETRY,
            summary="Record the change in the identity index",
        )
        return recorded.event_id

    def _record(
        self,
        message: InboundMessage,
        index: int,
        outcome: str,
        note: str = "",
        *,
        provenances: tuple[str, ...] = (),
        index_event: int | None = None,
    ) -> None:
        self._outcomes.append(
            MergeOutcome(
                control_id=message.control_id,
                message_type=message.message_type,
                merge_index=index,
                outcome=outcome,
                note=note,
                provenances=provenances,
                index_event=index_event,
                mapping_version=self._params.mapping_version,
            )
        )
        if outcome not in ("merged", "rejected"):
            self._set_status(outcome)

    def _set_status(self, status: str) -> None:
        self._status = status
        upsert_exchange_status(status, self._patched)


def merge_doubts(assessment: MergeAssessment) -> list[str]:
    """Why a person must decide (field names and thresholds only: no PHI)."""
    if not assessment.retired_patient:
        return ["the record to retire was never seen"]
    score = assessment.score
    if score is None:
        return ["the two records could not be compared"]
    doubts = [f"{field} conflicts" for field in score.conflicts]
    doubts += [f"{field} missing on one side" for field in score.missing_required]
    if score.decision is not MatchDecision.MATCH and not doubts:
        doubts.append(f"score {score.total:.1f} below the match threshold {score.match_threshold}")
    return doubts


class _StepTags:
    """A PHI-free tag per write step of one merge (workflow id, message, merge, step):
    the Provenance of a step is created once, however often its activity runs."""

    def __init__(self, workflow_id: str, message: InboundMessage, index: int) -> None:
        self._base = f"{workflow_id}|{message.sending_facility}|{message.control_id}|{index}"

    def tag(self, step: str) -> str:
        return hashlib.sha256(f"{self._base}|{step}".encode()).hexdigest()[:40]
