"""Careweave's custom search attributes: the keys operators filter on in the Temporal UI.

Values are codes (exchange names, statuses, facility namespace ids, HL7 message
types): never names, MRNs, birth dates or message text.
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

ALL = (EXCHANGE, STATUS, FACILITY, MESSAGE_TYPE, REVIEW_STATE, DESTINATION, DELIVERY_ALERT)


def dev_server_args() -> list[str]:
    """`temporal server start-dev` flags that register every Careweave search attribute."""
    args: list[str] = []
    for key in ALL:
        args += ["--search-attribute", f"{key.name}=Keyword"]
    return args
