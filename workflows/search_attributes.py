"""Careweave's custom search attributes: the keys operators filter on in the Temporal UI.

Values are codes (exchange names, statuses, facility namespace ids, HL7 message
types): never names, MRNs, birth dates or message text. Each exchange declares the ones
it sets (exchanges/); the registry registers them with Temporal.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

EXCHANGE = SearchAttributeKey.for_keyword("Exchange")
STATUS = SearchAttributeKey.for_keyword("Status")
FACILITY = SearchAttributeKey.for_keyword("Facility")
MESSAGE_TYPE = SearchAttributeKey.for_keyword("MessageType")
REVIEW_STATE = SearchAttributeKey.for_keyword("ReviewState")
# Ordered delivery: which destination a queue feeds, and whether it is failing now
# ("failing" from the first failed attempt until the next success: what ops alert on).
DESTINATION = SearchAttributeKey.for_keyword("Destination")
DELIVERY_ALERT = SearchAttributeKey.for_keyword("DeliveryAlert")
