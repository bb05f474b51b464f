"""What an exchange workflow keeps up to date about itself in Temporal visibility: its
exchange status and the pseudonyms of the business keys its messages carried.

Both changed for workflows already running, so both are behind ``workflow.patched``:
``exchange-status-attribute`` (Status renamed ExchangeStatus) and
``business-key-search-attributes`` (PatientKey, OrderKey, MessageKey grown by later
messages). A replayed history without the marker takes the old path to its end (the patch
answer is remembered per run), so old runs keep ``Status`` and new runs ``ExchangeStatus``;
``search_attributes.exchange_status_query`` finds both.

Runs with the ``search-attributes-coalesced`` marker (``coalesced_upserts``) write what a
message changes in one upsert and skip values the run already carries (the committer sets
the exchange, facility, message type and keys at the start): every upsert is a history
event and a visibility write on the server, on the per-message path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributeUpdate

from workflows import search_attributes as sa
from workflows.patches import Patched

with workflow.unsafe.imports_passed_through():
    from models.search import BusinessKeys

# Visibility stores a KeywordList whole with every upsert; a long-lived exchange (an
# encounter with dozens of A08s) would grow it without end. The first values are kept: the
# start's keys are what users search for, later control ids add little.
MAX_VALUES_PER_KEY = 20
COALESCED_UPSERTS_PATCH = "search-attributes-coalesced"
EXCHANGE_STATUS_PATCH = "exchange-status-attribute"
BUSINESS_KEYS_PATCH = "business-key-search-attributes"


def coalesced_upserts(patched: Patched = workflow.patched) -> bool:
    """Whether this run writes search attributes through ``upsert_changed``; runs started
    before it replay their one-upsert-per-attribute path to their end. ``patched``: the
    run's RunPatches where it has one (workflows/patches.py)."""
    return patched(COALESCED_UPSERTS_PATCH)


def upsert_exchange_start(exchange: str, facility: str, *, coalesced: bool) -> None:
    """The exchange and facility an exchange run declares at its start (the committer set
    them already: runs with ``coalesced_upserts`` write them only when they differ)."""
    updates = [sa.EXCHANGE.value_set(exchange), sa.FACILITY.value_set(facility)]
    if coalesced:
        upsert_changed(updates)
    else:
        workflow.upsert_search_attributes(updates)


def upsert_changed(updates: Sequence[SearchAttributeUpdate[Any]]) -> None:
    """One upsert of the ``updates`` that change a value the run carries; none if none do."""
    current = workflow.info().typed_search_attributes
    changed = [update for update in updates if not _carries(current.get(update.key), update)]
    if changed:
        workflow.upsert_search_attributes(changed)


def message_attributes(message_type: str, keys: BusinessKeys) -> list[SearchAttributeUpdate[Any]]:
    """What a message handled by the exchange sets: its type and the keys it brought."""
    return [sa.MESSAGE_TYPE.value_set(message_type), *_business_key_updates(keys)]


def _carries(current: Any, update: SearchAttributeUpdate[Any]) -> bool:
    if current is None or update.value is None:
        return current is update.value
    if isinstance(update.value, (list, tuple)):
        return list(current) == list(update.value)
    return bool(current == update.value)


def upsert_exchange_status(status: str, patched: Patched = workflow.patched) -> None:
    """Publish the exchange's status. Runs started before the rename keep writing ``Status``
    (and only that); a run that set ``Status`` at its start but reaches its first status
    change on today's code drops it, so one run never answers to two statuses."""
    if not patched(EXCHANGE_STATUS_PATCH):
        workflow.upsert_search_attributes([sa.LEGACY_STATUS.value_set(status)])
        return
    updates: list[SearchAttributeUpdate[str]] = [sa.EXCHANGE_STATUS.value_set(status)]
    if workflow.info().typed_search_attributes.get(sa.LEGACY_STATUS) is not None:
        updates.append(sa.LEGACY_STATUS.value_unset())
    workflow.upsert_search_attributes(updates)


def add_business_keys(keys: BusinessKeys, patched: Patched = workflow.patched) -> None:
    """Add the pseudonyms a message brought that the run does not carry yet (the start's
    were set by the committer). Nothing is upserted, and no patch marker written, when the
    message brings nothing new: the common case, a message that started its exchange."""
    updates = _business_key_updates(keys)
    if updates and patched(BUSINESS_KEYS_PATCH):
        workflow.upsert_search_attributes(updates)


def _business_key_updates(keys: BusinessKeys) -> list[SearchAttributeUpdate[Sequence[str]]]:
    updates: list[SearchAttributeUpdate[Sequence[str]]] = []
    for key, values in (
        (sa.PATIENT_KEY, keys.patient),
        (sa.ORDER_KEY, keys.order),
        (sa.MESSAGE_KEY, keys.message),
    ):
        merged = _merged(key, values)
        if merged is not None:
            updates.append(key.value_set(merged))
    return updates


def _merged(key: SearchAttributeKey[Sequence[str]], values: Sequence[str]) -> list[str] | None:
    current = list(workflow.info().typed_search_attributes.get(key) or ())
    room = MAX_VALUES_PER_KEY - len(current)
    added = [value for value in dict.fromkeys(values) if value not in current][: max(room, 0)]
    return current + added if added else None
