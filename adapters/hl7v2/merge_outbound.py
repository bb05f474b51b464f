"""The merge announcements Careweave sends: ADT^A40 for a merge, ADT^A37 for its undo.

Built with hl7apy (outbound messages are built with it: it knows the v2.5 structures and
escapes every value), from the typed merge the reader produced, so a destination receives
what was decided, not the inbound bytes: one A40 may have been partly approved. MSH-3..6
and MSH-10 are left empty here: the delivery readdresses each message per destination
(``adapters.hl7v2.readdress``), exactly as it forwards every other message.

Only what the typed merge holds is written; ``merge_messages.parse_identity_message``
reads a built message back to the same merges (tests/unit/test_merge_outbound.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hl7apy.core import Message
from hl7apy.factories import datatype_factory

from models.merge import PatientMerge
from models.person import (
    ContactNumber,
    PersonAddress,
    PersonDemographics,
    PersonIdentifier,
    PersonName,
)

__all__ = ["OUTBOUND_VERSION", "build_merge_message", "build_unlink_message"]

# v2.5: the version the partner peers and the gateway's ACKs default to; A40's structure
# there is ADT_A39 (the PATIENT group repeats), A37's ADT_A37.
OUTBOUND_VERSION = "2.5"
_EXPLICIT_NULL = '""'
_NULLABLE_FIELDS = {"PID-5": 5, "PID-7": 7, "PID-8": 8, "PID-11": 11, "PID-13": 13, "PID-14": 14}


def build_merge_message(
    merges: Sequence[PatientMerge],
    *,
    message_time: datetime,
    event_reason: str = "",
    operator_id: str = "",
    processing_id: str = "P",
) -> str:
    """ADT^A40 (structure ADT_A39): one PATIENT group (PID, MRG) per merge, in order.

    ``message_time`` goes to MSH-7 and EVN-2 (pass the merge's recorded time: a resend
    must carry the same bytes). Raises ValueError for an empty list or a merge that
    retires no patient identifier (an A35 account merge: A40 cannot say it).
    """
    if not merges:
        raise ValueError("an A40 needs at least one merge")
    if any(merge.retired is None for merge in merges):
        raise ValueError("an A40 announces patient identifier merges; an account merge has none")
    message = _message("A40", "ADT_A39", message_time, processing_id)
    _event(message, "A40", message_time, event_reason, operator_id)
    for merge in merges:
        group = message.add_group("ADT_A39_PATIENT")
        _patient(group.add_segment("PID"), merge.demographics, set_id=1, account=merge.account)
        mrg = group.add_segment("MRG")
        assert merge.retired is not None
        _identifier(mrg.add_field("MRG_1"), merge.retired)
        if merge.prior_account:
            _identifier(mrg.add_field("MRG_3"), merge.prior_account)
        if merge.prior_visit:
            _identifier(mrg.add_field("MRG_5"), merge.prior_visit)
        if merge.prior_name:
            _name(mrg.add_field("MRG_7"), merge.prior_name)
    return str(message.to_er7())


def build_unlink_message(
    merge: PatientMerge,
    *,
    message_time: datetime,
    event_reason: str = "",
    operator_id: str = "",
    processing_id: str = "P",
) -> str:
    """ADT^A37 (unlink) announcing that ``merge`` was undone: the first PID is the survivor
    (its identifiers without the retired one), the second the restored record (the retired
    identifier, and the prior name when MRG-7 gave one: all a merge message knows of it).

    Raises ValueError for a merge that retired no patient identifier.
    """
    retired = merge.retired
    if retired is None:
        raise ValueError("an A37 unlinks patient identifiers; an account merge has none")
    message = _message("A37", "ADT_A37", message_time, processing_id)
    _event(message, "A37", message_time, event_reason, operator_id)
    survivor = merge.demographics.model_copy(
        update={"identifiers": tuple(i for i in merge.demographics.identifiers if i != retired)}
    )
    _patient(message.add_segment("PID"), survivor, set_id=1, account=None)
    restored = message.add_segment("PID")
    _text(restored, "pid_1", "2")
    _identifier(restored.add_field("PID_3"), retired)
    if merge.prior_name:
        _name(restored.add_field("PID_5"), merge.prior_name)
    return str(message.to_er7())


# --- writing the typed values ------------------------------------------------------------


def _text(parent: Any, name: str, value: str) -> None:
    """One primitive (field, component or subcomponent), escaped by hl7apy on output."""
    if not value:
        return
    datatype = getattr(parent, name).datatype
    setattr(parent, name, datatype_factory(datatype, value, version=OUTBOUND_VERSION))


def _message(event: str, structure: str, time: datetime, processing_id: str) -> Any:
    message = Message(structure, version=OUTBOUND_VERSION)
    msh = message.msh
    # hl7apy stamps MSH-7 with the current time: replaced, so one merge builds one message.
    msh.msh_7 = _timestamp(time)
    msh.msh_9 = f"ADT^{event}^{structure}"
    msh.msh_11 = processing_id
    return message


def _event(message: Any, event: str, time: datetime, reason: str, operator_id: str) -> None:
    evn = message.add_segment("EVN")
    evn.evn_1 = event
    evn.evn_2.ts_1 = _timestamp(time)
    _text(evn, "evn_4", reason)
    if operator_id:
        _text(evn.evn_5, "xcn_1", operator_id)


def _timestamp(time: datetime) -> str:
    # DTM to the second; the offset only when the time carries one (a naive time is the
    # sender's local time, written as such).
    return time.strftime("%Y%m%d%H%M%S%z")


def _patient(
    pid: Any, person: PersonDemographics, *, set_id: int, account: PersonIdentifier | None
) -> None:
    _text(pid, "pid_1", str(set_id))
    for identifier in person.identifiers:
        _identifier(pid.add_field("PID_3"), identifier)
    for name in person.names:
        _name(pid.add_field("PID_5"), name)
    if person.birth_date:
        pid.pid_7.ts_1 = person.birth_date.replace("-", "")
    _text(pid, "pid_8", person.sex)
    for address in person.addresses:
        _address(pid.add_field("PID_11"), address)
    for contact in person.home_contacts:
        _contact(pid.add_field("PID_13"), contact)
    for contact in person.business_contacts:
        _contact(pid.add_field("PID_14"), contact)
    if account:
        _identifier(pid.pid_18, account)
    for null in person.explicit_nulls:
        # HL7's explicit null ("delete what you have") is forwarded as sent.
        setattr(pid, f"pid_{_NULLABLE_FIELDS[null]}", _EXPLICIT_NULL)


def _identifier(cx: Any, identifier: PersonIdentifier) -> None:
    _text(cx, "cx_1", identifier.value)
    _text(cx.cx_4, "hd_1", identifier.assigning_authority)
    _text(cx, "cx_5", identifier.identifier_type)


def _name(xpn: Any, name: PersonName) -> None:
    # The reader reads given names from XPN-2 and XPN-3, suffixes from XPN-4 and XPN-6.
    _text(xpn.xpn_1, "fn_1", name.family)
    _text(xpn, "xpn_2", name.given[0] if name.given else "")
    _text(xpn, "xpn_3", " ".join(name.given[1:]))
    _text(xpn, "xpn_4", name.suffix[0] if name.suffix else "")
    _text(xpn, "xpn_5", name.prefix)
    _text(xpn, "xpn_6", " ".join(name.suffix[1:]))
    _text(xpn, "xpn_7", name.name_type)


def _address(xad: Any, address: PersonAddress) -> None:
    _text(xad.xad_1, "sad_1", address.lines[0] if address.lines else "")
    _text(xad, "xad_2", " ".join(address.lines[1:]))
    _text(xad, "xad_3", address.city)
    _text(xad, "xad_4", address.state)
    _text(xad, "xad_5", address.postal_code)
    _text(xad, "xad_6", address.country)
    _text(xad, "xad_7", address.address_type)
    _text(xad, "xad_9", address.district)


def _contact(xtn: Any, contact: ContactNumber) -> None:
    # XTN-1 (the formatted number) holds the number as read: the reader gave it whole.
    _text(xtn, "xtn_1", contact.number)
    _text(xtn, "xtn_2", contact.use_code)
    _text(xtn, "xtn_3", contact.equipment_type)
    _text(xtn, "xtn_4", contact.email)
