"""Patient-unmerge: one merge of a patient-merge exchange undone, exactly.

Started by `careweave merge undo` with the merge's outcome (its Provenances and identity
index event, read from the merge exchange). It reads each Provenance and puts back what
that step changed, the last step first -- references re-pointed back, then both Patients'
links, active flag and copied identifiers -- and then undoes the merge in the identity
index. Nothing is deleted: both the merge and its undo stay in the FHIR version history,
the Provenances and the index's events. References changed again since the merge are
counted and left for a person. A merge that was announced downstream (its A40) is then
announced undone, an ADT^A37 on the same per-patient queues (``unmerge-delivery`` marker).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.exchange_search import upsert_exchange_status
from workflows.merge_announcements import UNMERGE_DELIVERY_PATCH, announce, unmerge_event_id

with workflow.unsafe.imports_passed_through():
    from activities.patient_merge import (
        IDENTITY_CHANGE_REFUSED,
        MERGE_WRITE_REJECTED,
        UndoIdentityInput,
        UndoMergeInput,
        undo_identity_change,
        undo_merge_in_fhir,
    )
    from models.merge import MergeAnnouncement, UnmergeInput, UnmergeSummary

_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[MERGE_WRITE_REJECTED, IDENTITY_CHANGE_REFUSED],
)


def unmerge_workflow_id(merge_exchange: str, control_id_key: str, merge_index: int) -> str:
    """``patient-unmerge/<authority>/<patient key>/<message key>/<merge>``: one undo per merge."""
    return (
        f"{merge_exchange.replace('patient-merge/', 'patient-unmerge/', 1)}"
        f"/{control_id_key}/{merge_index}"
    )


@workflow.defn
class PatientUnmerge:
    @workflow.run
    async def run(self, params: UnmergeInput) -> UnmergeSummary:
        upsert_exchange_status("undoing")
        undone = await workflow.execute_activity_method(
            undo_merge_in_fhir,
            UndoMergeInput(
                provenances=params.merge.provenances, mapping_version=params.mapping_version
            ),
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=_RETRY,
            summary="Put back what each step of the merge changed, from its Provenance",
        )
        index_event = None
        if params.merge.index_event is not None:
            index_event = await workflow.execute_activity_method(
                undo_identity_change,
                UndoIdentityInput(
                    merge_event=params.merge.index_event,
                    actor=params.actor,
                    reason=params.reason,
                    exchange=workflow.info().workflow_id,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_RETRY,
                summary="Undo the merge in the identity index",
            )
        announced = params.announced
        if announced is not None and workflow.patched(UNMERGE_DELIVERY_PATCH):
            await announce(
                MergeAnnouncement(
                    trigger="A37",
                    merge=announced.announcement.merge,
                    message_time=workflow.now(),
                    operator_id=params.actor,
                ),
                patient_key=announced.patient_key,
                event_id=unmerge_event_id(announced.event_id),
                mapping_version=params.mapping_version,
            )
        upsert_exchange_status("unmerged")
        return UnmergeSummary(
            patients_restored=undone.patients_restored,
            references_restored=undone.references_restored,
            references_not_restored=undone.references_not_restored,
            index_event=index_event,
        )
