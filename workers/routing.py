"""Which exchange a message belongs to, decided on the ACK path from a segment split.

Only what must be known before committing is read here: the exchange, its
workflow id (from stable business keys, never PHI) and the segments the
exchange cannot do without. The full hl7apy parse happens later, in an activity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from adapters.hl7v2.header import DecodedMessage, MessageRejected

# Message types the gateway accepts; anything else is answered AR 200/201.
SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21"}),
    "ORU": frozenset({"R01"}),
    "ADT": frozenset({"A03", "A13", "A08"}),
}
# Segments an exchange cannot do without: missing ones are answered AE naming the segment.
REQUIRED_SEGMENTS: dict[str, tuple[str, ...]] = {
    "ORU^R01": ("PID", "OBR", "OBX"),
    "ORM^O01": ("PID", "ORC", "OBR"),
    "OML^O21": ("PID", "ORC", "OBR"),
    "ADT^A03": ("PID", "PV1"),
    "ADT^A13": ("PID", "PV1"),
    "ADT^A08": ("PID", "PV1"),
}
SUPPORTED_VERSIONS = frozenset(
    {"2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"}
)

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Route:
    """Where a message goes: a signal-with-start on one exchange's workflow."""

    exchange: str
    workflow_type: str
    workflow_id: str
    signal: str
    facility: str
    business_key: str
    placer_order_number: str = ""
    placer_namespace: str = ""
    # Discharge sync: pseudonyms of the encounter and of the patient (keyed HMAC).
    encounter_key: str = ""
    patient_key: str = ""


def id_part(value: str) -> str:
    """A workflow-id segment: order numbers and facility codes contain '/', '^' or spaces."""
    cleaned = _UNSAFE_ID_CHARS.sub("_", value.strip()).strip("_")
    return cleaned[:64] or "unknown"


def _structure_error(
    message: DecodedMessage, segment_id: str, position: int | None, text: str, code: str = "100"
) -> MessageRejected:
    return MessageRejected(
        ack_code="AE",
        error_code=code,
        segment_id=segment_id,
        segment_sequence=1,
        field_position=position,
        text=text,
        header=message.header,
    )


def route_lab_message(message: DecodedMessage) -> Route:
    """Order-to-result is keyed by the placer order number (ORC-2 / OBR-2)."""
    header = message.header
    is_result = header.message_code == "ORU"
    if is_result:
        number_fields = (("OBR", 2), ("ORC", 2))
        filler_fields = (("OBR", 3), ("ORC", 3))
        # A result comes from the lab; the ordering facility is the one it is sent to.
        default_facility = header.receiving_facility
    else:
        number_fields = (("ORC", 2), ("OBR", 2))
        filler_fields = (("ORC", 3), ("OBR", 3))
        default_facility = header.sending_facility
    placer, namespace = "", ""
    for segment_id, position in number_fields:
        placer = message.field(segment_id, position)
        if placer:
            namespace = message.field(segment_id, position, component=2)
            break
    if not placer:
        filler = next((message.field(s, p) for s, p in filler_fields if message.field(s, p)), "")
        if not filler:
            raise _structure_error(
                message,
                number_fields[0][0],
                number_fields[0][1],
                "neither a placer (ORC-2/OBR-2) nor a filler order number (ORC-3/OBR-3) "
                "is present: the message cannot be matched to an order",
                code="101",
            )
        # Without a placer number the result cannot join its order's exchange; it
        # gets its own, which waits for an order and then asks a reviewer.
        placer = f"filler-{filler}"
    facility = id_part(namespace or default_facility)
    business_key = id_part(placer)
    return Route(
        exchange="order-to-result",
        workflow_type="OrderToResult",
        workflow_id=f"order-to-result/{facility}/{business_key}",
        signal="result_message" if is_result else "order_message",
        facility=facility,
        business_key=business_key,
        placer_order_number=placer,
        placer_namespace=namespace,
    )


def pseudonym(key: bytes, *parts: str) -> str:
    """A stable, PHI-free stand-in for an identifier (visit number, MRN) in workflow ids.

    Keyed, because a plain hash of a medical record number is reversed by trying them all.
    """
    if not key:
        raise ValueError("a pseudonym key is required (Settings.resolved_pseudonym_key)")
    digest = hmac.new(key, "|".join(parts).encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode()[:20].lower()


def route_adt_message(message: DecodedMessage, pseudonym_key: bytes) -> Route:
    """Discharge sync is keyed by the encounter (PV1-19 visit number, else PID-18 account)."""
    header = message.header
    facility = id_part(header.sending_facility)
    patient_id = message.field("PID", 3)
    if not patient_id:
        raise _structure_error(
            message,
            "PID",
            3,
            "no patient identifier (PID-3): the event cannot be ordered per patient",
            "101",
        )
    authority = message.field("PID", 3, component=4) or header.sending_facility
    patient_key = pseudonym(pseudonym_key, "patient", authority, patient_id)
    encounter = message.field("PV1", 19) or message.field("PID", 18)
    if encounter:
        encounter_key = pseudonym(pseudonym_key, "encounter", header.sending_facility, encounter)
    elif header.trigger_event == "A08":
        # An update with no visit or account number belongs to no discharge; it is still
        # committed (and kept in its own exchange's history) rather than refused.
        encounter_key = f"p-{patient_key}"
    else:
        raise _structure_error(
            message,
            "PV1",
            19,
            "neither a visit number (PV1-19) nor an account number (PID-18): "
            "the discharge cannot be matched to an encounter",
            "101",
        )
    return Route(
        exchange="discharge-sync",
        workflow_type="DischargeSync",
        workflow_id=f"discharge-sync/{facility}/{encounter_key}",
        signal="adt_event",
        facility=facility,
        business_key=encounter_key,
        encounter_key=encounter_key,
        patient_key=patient_key,
    )


def route(message: DecodedMessage, *, pseudonym_key: bytes = b"") -> Route:
    if message.header.message_code in ("ORM", "OML", "ORU"):
        return route_lab_message(message)
    if message.header.message_code == "ADT":
        return route_adt_message(message, pseudonym_key)
    raise MessageRejected(
        ack_code="AR",
        error_code="200",
        segment_id="MSH",
        segment_sequence=1,
        field_position=9,
        text=f"unsupported message type {message.header.message_type}",
        header=message.header,
    )
