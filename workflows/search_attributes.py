"""Careweave's custom search attributes: the keys operators filter on in the Temporal UI.

Values are codes (exchange names, statuses, facility namespace ids, HL7 message types) or
keyed pseudonyms (``exchanges.sdk.search_pseudonym``): never names, MRNs, order numbers,
birth dates or message text. Each exchange declares the ones it sets (exchanges/); the
registry registers them with Temporal.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.common import SearchAttributeKey

EXCHANGE = SearchAttributeKey.for_keyword("Exchange")
# The exchange's own state ("ordered", "final", "delivered", ...). Named so, not "Status":
# the dev server's query parser reads `status` as a keyword ("invalid search attribute:
# status" for ``Status = 'final'``) and the Temporal UI shows a "Status" column where users
# expect the execution's RUNNING badge.
EXCHANGE_STATUS = SearchAttributeKey.for_keyword("ExchangeStatus")
# The former name of EXCHANGE_STATUS: workflows started before the rename set it until
# they end (workflow.patched("exchange-status-attribute")), so it stays registered and
# queries on an exchange status look at both (``exchange_status_query``).
LEGACY_STATUS = SearchAttributeKey.for_keyword("Status")
FACILITY = SearchAttributeKey.for_keyword("Facility")
MESSAGE_TYPE = SearchAttributeKey.for_keyword("MessageType")
REVIEW_STATE = SearchAttributeKey.for_keyword("ReviewState")
# The pending review's kind (models.review.ReviewReason, a code) and when it was asked, so
# that ops metrics count reviews waiting per reason and find the oldest from visibility
# alone (workers/visibility_metrics.py), without querying each workflow. Set together with
# ReviewState ``pending`` by runs with the ``review-reason-attribute`` patch marker.
REVIEW_REASON = SearchAttributeKey.for_keyword("ReviewReason")
REVIEW_REQUESTED_AT = SearchAttributeKey.for_datetime("ReviewRequestedAt")
# Ordered delivery: which destination a queue feeds, and whether it is failing now
# ("failing" from the first failed attempt until the next success: what ops alert on).
DESTINATION = SearchAttributeKey.for_keyword("Destination")
DELIVERY_ALERT = SearchAttributeKey.for_keyword("DeliveryAlert")
# Destination health (workflows/destination_health.py, id destination-health/<name>): its
# state is in DELIVERY_ALERT ("up", "degraded", "down"); these say how much waits while
# it is down: events held across its queues and when the oldest of them arrived.
HELD_EVENTS = SearchAttributeKey.for_int("HeldEvents")
OLDEST_HELD_AT = SearchAttributeKey.for_datetime("OldestHeldAt")
# Business keys, as keyed pseudonyms only (models/search.py BusinessKeys says which
# identifiers): the patient (PID-3), the order and the visit (placer/filler order numbers,
# accession, PV1-19) and the messages received (MSH-10). Lists: an exchange meets several
# (a result brings a filler number, every message its own control id), bounded by
# workflows/business_keys.py.
PATIENT_KEY = SearchAttributeKey.for_keyword_list("PatientKey")
ORDER_KEY = SearchAttributeKey.for_keyword_list("OrderKey")
MESSAGE_KEY = SearchAttributeKey.for_keyword_list("MessageKey")
BUSINESS_KEYS: tuple[SearchAttributeKey[Sequence[str]], ...] = (
    PATIENT_KEY,
    ORDER_KEY,
    MESSAGE_KEY,
)


def exchange_status_query(status: str) -> str:
    """A visibility filter for one exchange status that also finds workflows started before
    the rename (which carry ``Status``; it needs back-quotes, the parser's keyword)."""
    quoted = status.replace("'", "''")
    return f"(ExchangeStatus = '{quoted}' OR `Status` = '{quoted}')"
