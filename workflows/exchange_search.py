"""What an exchange workflow keeps up to date about itself in Temporal visibility: its
exchange status and the pseudonyms of the business keys its messages carried.

Both changed for workflows already running, so both are behind ``workflow.patched``:
``exchange-status-attribute`` (Status renamed ExchangeStatus) and
``business-key-search-attributes`` (PatientKey, OrderKey, MessageKey grown by later
messages). A replayed history without the marker takes the old path to its end (the patch
answer is remembered per run), so old runs keep ``Status`` and new runs ``ExchangeStatus``;
``search_attributes.exchange_status_query`` finds both.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributeUpdate

from workflows import search_attributes as sa

with workflow.unsafe.imports_passed_through():
    from models.search import BusinessKeys

# Visibility stores a KeywordList whole with every upsert; a long-lived exchange (an
# encounter with dozens of A08s) would grow it without end. The first values are kept: the
# start's keys are what users search for, later control ids add little.
MAX_VALUES_PER_KEY = 20


def upsert_exchange_status(status: str) -> None:
    """Publish the exchange's status. Runs started before the rename keep writing ``Status``
    (and only that); a run that set ``Status`` at its start but reaches its first status
    change on today's code drops it, so one run never answers to two statuses."""
    if not workflow.patched("exchange-status-attribute"):
        workflow.upsert_search_attributes([sa.LEGACY_STATUS.value_set(status)])
        return
    updates: list[SearchAttributeUpdate[str]] = [sa.EXCHANGE_STATUS.value_set(status)]
    if workflow.info().typed_search_attributes.get(sa.LEGACY_STATUS) is not None:
        updates.append(sa.LEGACY_STATUS.value_unset())
    workflow.upsert_search_attributes(updates)


def add_business_keys(keys: BusinessKeys) -> None:
    """Add the pseudonyms a message brought that the run does not carry yet (the start's
    were set by the committer). Nothing is upserted, and no patch marker written, when the
    message brings nothing new: the common case, a message that started its exchange."""
    updates: list[SearchAttributeUpdate[Sequence[str]]] = []
    for key, values in (
        (sa.PATIENT_KEY, keys.patient),
        (sa.ORDER_KEY, keys.order),
        (sa.MESSAGE_KEY, keys.message),
    ):
        merged = _merged(key, values)
        if merged is not None:
            updates.append(key.value_set(merged))
    if updates and workflow.patched("business-key-search-attributes"):
        workflow.upsert_search_attributes(updates)


def _merged(key: SearchAttributeKey[Sequence[str]], values: Sequence[str]) -> list[str] | None:
    current = list(workflow.info().typed_search_attributes.get(key) or ())
    room = MAX_VALUES_PER_KEY - len(current)
    added = [value for value in dict.fromkeys(values) if value not in current][: max(room, 0)]
    return current + added if added else None
