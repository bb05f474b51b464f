"""What the gateway hands to an exchange once Temporal has durably accepted a message."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from models.search import BusinessKeys


class InboundMessage(BaseModel):
    """One accepted HL7 v2 message, as it travels in a signal.

    ``text`` is the decoded message (segments separated by CR); it is PHI and
    lives only in payloads (encrypted by the payload codec in production),
    never in ids, search attributes or logs.
    """

    model_config = ConfigDict(frozen=True)

    text: str
    message_type: str
    control_id: str
    sending_facility: str
    received_at: datetime
    normalizations: tuple[str, ...] = ()
    # W3C trace context of the gateway's receive span (random ids only, no PHI), so the
    # exchange handles this message in the message's own trace.
    trace_context: dict[str, str] = {}
    # Pseudonyms of the message's business keys (exchanges.sdk.read_business_keys): the
    # exchange adds the new ones to its search attributes. Empty in messages recorded
    # before they existed.
    business_keys: BusinessKeys = BusinessKeys()

    @property
    def dedup_key(self) -> str:
        """HL7 resends reuse MSH-10 from the same sender: that pair identifies a message."""
        return f"{self.sending_facility}|{self.control_id}"
