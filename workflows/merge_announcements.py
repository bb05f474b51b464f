"""Taking a patient merge (ADT^A40), or its undo (ADT^A37), to the destinations subscribed to
it, through ordered delivery: on the survivor's per-patient queue of each destination, the
queue that patient's other events (discharge sync's A03, A08, A13) go through, so a
destination receives the merge after every earlier event of that patient, never before.

One A40 per merge applied (an MRG whose merge a reviewer rejected is not announced), each on
its own survivor's queue. Called from workflow code (patient-merge, patient-unmerge):
routing and enqueueing are activities of the ordered-delivery step, as for discharge sync.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.ordered_delivery import DeliveryActivities, EnqueueRequest, HandOverRequest
    from models.delivery import DeliveryItem
    from models.destinations import Subscription
    from models.merge import MergeAnnouncement

# Runs that announce merges downstream carry these markers; runs recorded before replay
# without the routing and enqueue activities.
MERGE_DELIVERY_PATCH = "merge-delivery"
UNMERGE_DELIVERY_PATCH = "unmerge-delivery"
# Runs that tell the merged-away patient's open exchanges and hand its delivery queues over
# to the survivor's (the A40 after what they held).
MERGE_IN_FLIGHT_PATCH = "merge-in-flight"


def merge_event_id(patient_key: str, facility: str, control_id: str, merge_index: int) -> str:
    """The A40's delivery event id (no PHI: pseudonym, facility, MSH-10, MRG position);
    one per merge, so a redelivered signal or retried activity is dropped by the queue."""
    return f"merge/{patient_key}/{facility}/{control_id}/{merge_index}"


def unmerge_event_id(merge_event: str) -> str:
    return f"{merge_event}/undo"


async def announce(
    announcement: MergeAnnouncement,
    *,
    patient_key: str,
    event_id: str,
    mapping_version: str,
    retired_patient_key: str | None = None,
) -> list[str]:
    """Queue ``announcement`` for every destination subscribed to its trigger, on the
    survivor's queue; the destinations' names (none when nobody subscribes). With
    ``retired_patient_key`` (a merge), through the retired patient's queue where it still
    runs: that queue hands what it holds, then the announcement, to the survivor's."""
    subscription = Subscription(announcement.trigger)
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
            announcement=announcement,
            mapping_version=mapping_version,
            routing_version=routing.routing_version,
            policy=destination.policy,
        )
        if retired_patient_key is not None:
            await workflow.execute_activity_method(
                DeliveryActivities.hand_over_or_enqueue,
                HandOverRequest(
                    destination=destination.name,
                    kind=destination.kind,
                    retired_patient_key=retired_patient_key,
                    survivor_patient_key=patient_key,
                    item=item,
                ),
                start_to_close_timeout=timedelta(seconds=60),
                summary=f"Queue {subscription.value} for {destination.name} after the "
                "merged-away patient's events",
            )
            continue
        await workflow.execute_activity_method(
            DeliveryActivities.enqueue_delivery,
            EnqueueRequest(
                destination=destination.name,
                kind=destination.kind,
                patient_key=patient_key,
                item=item,
            ),
            start_to_close_timeout=timedelta(seconds=60),
            summary=f"Queue {subscription.value} for {destination.name}",
        )
    return [destination.name for destination in routing.destinations]
