"""Telling the open exchanges of a merged-away patient that their patient is now the
survivor: an order waiting for its result then takes a result that names the survivor (the
lab got the merge too) as its own patient's, instead of holding it for a wrong-patient
review.

Open exchanges are found in Temporal visibility by PatientKey (the keyed pseudonym of the
retired MRN, never the MRN) and signalled; each checks for itself that the retired
identifier is its patient's (same assigning authority) before it believes the notice.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from exchanges.sdk import search_pseudonym
from models.merge import PATIENT_MERGED_SIGNAL, PatientMerge, PatientMergedNotice
from models.search import BusinessKeyKind, BusinessKeys
from workflows import search_attributes as sa

# The exchanges that keep a patient while they wait (a lab order for its result).
EXCHANGES_TOLD = ("order-to-result",)
# A bound on one merge's fan-out: a patient has a handful of open orders, not thousands.
MAX_EXCHANGES_TOLD = 500


class TellOpenExchangesInput(BaseModel):
    model_config = ConfigDict(frozen=True)
    merge: PatientMerge
    merge_exchange: str  # the patient-merge workflow id (no PHI)


class OpenExchangeNotices:
    def __init__(self, client: Client, pseudonym_key: bytes) -> None:
        self._client = client
        self._pseudonym_key = pseudonym_key

    @activity.defn(name="tell_open_exchanges")
    async def tell_open_exchanges(self, request: TellOpenExchangesInput) -> int:
        """Signal every running exchange of the retired MRN; how many were told. A retried
        activity tells them again: each drops a notice it already has."""
        merge = request.merge
        if merge.retired is None:
            return 0
        key = self._pseudonym_key
        retired_key = search_pseudonym(key, BusinessKeyKind.MRN, merge.retired.value)
        exchanges = " OR ".join(f"{sa.EXCHANGE.name} = '{name}'" for name in EXCHANGES_TOLD)
        query = (
            f"({exchanges}) AND ExecutionStatus = 'Running' "
            f"AND {sa.PATIENT_KEY.name} = '{retired_key}'"
        )
        survivor_keys = dict.fromkeys(
            search_pseudonym(key, BusinessKeyKind.MRN, identifier.value)
            for identifier in (merge.survivor, *merge.demographics.identifiers)
        )
        notice = PatientMergedNotice(
            merge_exchange=request.merge_exchange,
            retired=merge.retired,
            survivor=merge.survivor,
            survivor_demographics=merge.demographics,
            survivor_keys=BusinessKeys(patient=tuple(survivor_keys)),
        )
        told = 0
        async for execution in self._client.list_workflows(query, limit=MAX_EXCHANGES_TOLD):
            activity.heartbeat()
            handle = self._client.get_workflow_handle(execution.id, run_id=execution.run_id)
            try:
                await handle.signal(PATIENT_MERGED_SIGNAL, notice)
            except RPCError as err:
                # Finished since it was listed: nothing left to tell.
                if err.status is not RPCStatusCode.NOT_FOUND:
                    raise
                continue
            told += 1
        return told
