"""Where a merge's announcement queues: the per-patient delivery key of a survivor the
merge exchange is not keyed on (an A40's second PATIENT group names another patient).

An activity because the key is a keyed pseudonym: the key never enters workflow history.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from temporalio import activity

from adapters.pseudonyms import pseudonym
from models.merge import PatientMerge


class SurvivorQueueKeyInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    merge: PatientMerge
    sending_facility: str  # MSH-4: the authority when PID-3 names none


def survivor_queue_key(pseudonym_key: bytes, request: SurvivorQueueKeyInput) -> str:
    """The key ``exchanges.sdk.patient_pseudonym`` gives this survivor's own messages (its
    PID-3 first repetition with CX-4, else MSH-4): the queue its A03/A08 go through."""
    demographics = request.merge.demographics
    first = demographics.identifiers[0] if demographics.identifiers else request.merge.survivor
    authority = first.assigning_authority or request.sending_facility
    return pseudonym(pseudonym_key, "patient", authority, first.value)


def retired_queue_key(pseudonym_key: bytes, request: SurvivorQueueKeyInput) -> str | None:
    """The key the merged-away record's own messages had (its MRG-1 identifier with CX-4,
    else MSH-4, as ``patient_pseudonym`` keys a PID-3): the queues to hand over. None for a
    merge that retires no patient identifier (A35)."""
    retired = request.merge.retired
    if retired is None:
        return None
    authority = retired.assigning_authority or request.sending_facility
    return pseudonym(pseudonym_key, "patient", authority, retired.value)


class AnnouncementActivities:
    def __init__(self, pseudonym_key: bytes) -> None:
        self._pseudonym_key = pseudonym_key

    @activity.defn(name="survivor_queue_key")
    async def survivor_queue_key(self, request: SurvivorQueueKeyInput) -> str:
        return survivor_queue_key(self._pseudonym_key, request)

    @activity.defn(name="retired_queue_key")
    async def retired_queue_key(self, request: SurvivorQueueKeyInput) -> str | None:
        return retired_queue_key(self._pseudonym_key, request)
