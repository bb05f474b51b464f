"""Patient merge, link and unlink messages -> MergeMessage / LinkMessage.

Reads ADT^A40 (structure ADT_A39: the PATIENT group PID [PD1] MRG [PV1] repeats, one
merge per MRG, in message order), the older merges A18, A34, A35 and A36 (one PID, one
MRG), and A24 (link) / A37 (unlink) (two PIDs, no MRG). A41/A42 (account and visit
merges) are refused by name until supported.

Runs inside an activity (and may run in a routing function): plain splitting on the
message's own delimiters through ``adapters.hl7v2.fields``, no hl7apy. Every PID is read
by patient-sync's reader (``person_messages.read_person_demographics``), so a merge's
survivor is the Patient patient-sync, lab and discharge sync key on.

Refusals are ``MergeMessageInvalid``, a ``MessageRejected``: raised in a routing function
the gateway answers it (AR/AE with an ERR locating segment and field, HL7 table 0357
codes as the gateway uses them: 100 segment, 101 required field, 102 data type, 200/201
unsupported type/event, 205 duplicate key). Texts name segments, fields and event codes,
never a value: they end up in ACKs, Temporal failures and logs.
"""

from __future__ import annotations

from adapters.hl7v2.fields import (
    Delimiters,
    Segment,
    at,
    components,
    delimiters_from_msh,
    hd_name,
    identifier,
    read_segments,
    split_segments,
    timestamp,
    unescape_text,
)
from adapters.hl7v2.header import MessageHeader, MessageRejected
from adapters.hl7v2.person_fields import read_person_name
from adapters.hl7v2.person_messages import PersonMessageInvalid, read_person_demographics
from models.merge import (
    IdentifierMatch,
    LinkMessage,
    LinkTrigger,
    MergeMessage,
    MergeTrigger,
    PatientMerge,
)
from models.person import PersonDemographics, PersonIdentifier

__all__ = [
    "NOT_YET_SUPPORTED_EVENTS",
    "MergeMessageInvalid",
    "check_identity_event",
    "parse_identity_message",
]

# Merge events HL7 defines that Careweave refuses by name rather than as unknown: a sender
# must learn that the account or visit merge it sent was not applied anywhere.
NOT_YET_SUPPORTED_EVENTS: dict[str, str] = {
    "A41": "merge account - patient account number",
    "A42": "merge visit - visit number",
    "A39": "merge person - patient ID",
    "A43": "move patient information - patient identifier list",
    "A44": "move account information - patient account number",
    "A45": "move visit information - visit number",
}
# Events whose message carries one PATIENT group (ADT_A30, ADT_A18): one PID, one MRG.
_SINGLE_MERGE = frozenset(
    {
        MergeTrigger.MERGE_PATIENT_INFORMATION,
        MergeTrigger.MERGE_PATIENT_IDENTIFIER,
        MergeTrigger.MERGE_ACCOUNT,
        MergeTrigger.MERGE_PATIENT_IDENTIFIER_AND_ACCOUNT,
    }
)
_ACCOUNT_MERGES = frozenset(
    {MergeTrigger.MERGE_ACCOUNT, MergeTrigger.MERGE_PATIENT_IDENTIFIER_AND_ACCOUNT}
)


class MergeMessageInvalid(MessageRejected, ValueError):
    """A merge, link or unlink message that cannot be applied; carries the ACK's MSA/ERR facts.

    A ``MessageRejected``, so a routing function may let it through to the gateway; in an
    activity it becomes a non-retryable failure for the review gate. ``header`` is the
    gateway's header when the caller passed one (the ACK echoes it), else None.
    """


def check_identity_event(header: MessageHeader) -> MergeTrigger | LinkTrigger:
    """The event of MSH-9 when this reader reads it; else the refusal (AR 200/201), naming
    the event for a merge HL7 defines that is not supported yet. Cheap: MSH only."""
    return _trigger(header.message_code, header.trigger_event, header)


def parse_identity_message(
    text: str, *, header: MessageHeader | None = None
) -> MergeMessage | LinkMessage:
    """One decoded merge (A40, A18, A34, A35, A36), link (A24) or unlink (A37) message.

    ``text`` may be CR, LF or CRLF separated. ``header``, when given, is attached to a
    refusal so the gateway's ACK can answer it. Raises MergeMessageInvalid.
    """
    lines = split_segments(text.replace("\r\n", "\r").replace("\n", "\r"))
    if not lines or not lines[0].startswith("MSH"):
        raise MergeMessageInvalid("AR", "100", "message does not start with MSH", header=header)
    d = delimiters_from_msh(lines[0])
    if d is None:
        raise MergeMessageInvalid(
            "AR", "102", "MSH-2 encoding characters missing", field_position=2, header=header
        )
    reader = _Reader(read_segments(lines, d), d, header)
    msh = reader.segments[0]
    trigger = _trigger(
        unescape_text(msh.component(9, 1), d).strip(),
        unescape_text(msh.component(9, 2), d).strip(),
        header,
    )
    evn = next((s for s in reader.segments if s.name == "EVN"), None)
    event_time = (timestamp(evn.raw(2), d) if evn else None) or timestamp(msh.raw(7), d)
    control_id = unescape_text(msh.raw(10), d).strip()
    sending_facility = hd_name(msh.raw(4), d).strip()
    event_reason = reader.first_component(evn, 4) if evn else ""
    operator_id = reader.first_component(evn, 5) if evn else ""
    if isinstance(trigger, LinkTrigger):
        first, second = reader.link_pair(trigger)
        return LinkMessage(
            trigger=trigger,
            control_id=control_id,
            sending_facility=sending_facility,
            event_time=event_time,
            event_reason=event_reason,
            operator_id=operator_id,
            first=first,
            second=second,
        )
    return MergeMessage(
        trigger=trigger,
        control_id=control_id,
        sending_facility=sending_facility,
        event_time=event_time,
        event_reason=event_reason,
        operator_id=operator_id,
        merges=reader.merges(trigger),
    )


def _trigger(code: str, event: str, header: MessageHeader | None) -> MergeTrigger | LinkTrigger:
    if code != "ADT":
        raise MergeMessageInvalid(
            "AR", "200", "MSH-9 message type is not ADT", field_position=9, header=header
        )
    for kind in (MergeTrigger, LinkTrigger):
        try:
            return kind(event)
        except ValueError:
            pass
    if event in NOT_YET_SUPPORTED_EVENTS:
        text = (
            f"MSH-9 trigger event {event} ({NOT_YET_SUPPORTED_EVENTS[event]}) is not "
            "supported on this interface yet; nothing was merged"
        )
    else:
        text = "MSH-9 trigger event is not a patient merge, link or unlink event"
    raise MergeMessageInvalid("AR", "201", text, field_position=9, header=header)


class _Reader:
    """The segments of one message and the refusals that locate a problem in them."""

    def __init__(
        self, segments: list[Segment], d: Delimiters, header: MessageHeader | None
    ) -> None:
        self.segments = segments
        self.d = d
        self.header = header

    def refuse(
        self, error_code: str, segment_id: str, sequence: int, position: int | None, text: str
    ) -> MergeMessageInvalid:
        return MergeMessageInvalid(
            "AE",
            error_code,
            text,
            segment_id=segment_id,
            segment_sequence=sequence,
            field_position=position,
            header=self.header,
        )

    def first_component(self, segment: Segment, position: int) -> str:
        return unescape_text(at(components(segment.raw(position), self.d), 1), self.d).strip()

    def cx(self, segment: Segment, position: int, repetition: int = 1) -> PersonIdentifier | None:
        """One CX repetition, as PID-3 is read (values unescaped, not stripped)."""
        read = identifier(segment.raw(position, repetition), self.d)
        if not read.identifier.strip():
            return None
        return PersonIdentifier(
            value=read.identifier,
            assigning_authority=read.assigning_authority,
            identifier_type=read.identifier_type,
        )

    def demographics(self, pid: Segment, sequence: int) -> PersonDemographics:
        try:
            return read_person_demographics(pid, self.d)
        except PersonMessageInvalid as err:
            # An empty PID-3 is a required field missing; anything else a value unreadable.
            code = "101" if err.field_position in (None, 3) else "102"
            raise self.refuse(code, "PID", sequence, err.field_position, err.text) from err

    # -- merges ---------------------------------------------------------------------

    def merges(self, trigger: MergeTrigger) -> tuple[PatientMerge, ...]:
        # PATIENT groups: each MRG belongs to the PID before it. An A40 may repeat the group;
        # a PID followed by several MRG is read as that many merges into one survivor.
        groups: list[tuple[int, Segment, list[tuple[int, Segment]]]] = []
        for sequence, segment in enumerate(self.segments, start=1):
            if segment.name == "PID":
                groups.append((sequence, segment, []))
            elif segment.name == "MRG":
                if not groups:
                    raise self.refuse(
                        "100", "MRG", sequence, None, "MRG before any PID: its survivor is unknown"
                    )
                groups[-1][2].append((sequence, segment))
        last = len(self.segments)
        if not groups:
            raise self.refuse(
                "100", "PID", last, None, f"required PID segment is missing for ADT^{trigger}"
            )
        for pid_sequence, _, mrgs in groups:
            if not mrgs:
                raise self.refuse(
                    "100",
                    "MRG",
                    pid_sequence,
                    None,
                    f"required MRG segment is missing for ADT^{trigger} "
                    f"(PATIENT group of the PID at segment {pid_sequence})",
                )
        if trigger in _SINGLE_MERGE and (len(groups) > 1 or len(groups[0][2]) > 1):
            extra = groups[1][0] if len(groups) > 1 else groups[0][2][1][0]
            raise self.refuse(
                "100",
                self.segments[extra - 1].name,
                extra,
                None,
                f"ADT^{trigger} carries one PID and one MRG; use A40 for several merges",
            )
        merges: list[PatientMerge] = []
        for pid_sequence, pid, mrgs in groups:
            demographics = self.demographics(pid, pid_sequence)
            for mrg_sequence, mrg in mrgs:
                merges.append(
                    self.merge(trigger, demographics, pid, pid_sequence, mrg, mrg_sequence)
                )
        return tuple(merges)

    def merge(
        self,
        trigger: MergeTrigger,
        demographics: PersonDemographics,
        pid: Segment,
        pid_sequence: int,
        mrg: Segment,
        mrg_sequence: int,
    ) -> PatientMerge:
        patient = demographics.patient
        survivor = PersonIdentifier(
            value=patient.identifier,
            assigning_authority=patient.assigning_authority,
            identifier_type=patient.identifier_type,
        )
        retired: PersonIdentifier | None = None
        match: IdentifierMatch | None = None
        if trigger is not MergeTrigger.MERGE_ACCOUNT:
            retired, match = self.retired_identifier(survivor, mrg, mrg_sequence)
        prior_account = self.cx(mrg, 3)
        account = self.cx(pid, 18)
        if trigger in _ACCOUNT_MERGES:
            if prior_account is None:
                raise self.refuse(
                    "101", "MRG", mrg_sequence, 3, f"ADT^{trigger} without a prior account (MRG-3)"
                )
            if account is None:
                raise self.refuse(
                    "101", "PID", pid_sequence, 18, f"ADT^{trigger} without an account (PID-18)"
                )
        names = (read_person_name(rep, self.d) for rep in mrg.repetitions(7) if rep)
        return PatientMerge(
            survivor=survivor,
            retired=retired,
            identifier_match=match,
            prior_account=prior_account,
            account=account,
            prior_visit=self.cx(mrg, 5),
            prior_name=next((name for name in names if name), None),
            demographics=demographics,
        )

    def retired_identifier(
        self, survivor: PersonIdentifier, mrg: Segment, sequence: int
    ) -> tuple[PersonIdentifier, IdentifierMatch]:
        """The MRG-1 repetition of the survivor's kind (see IdentifierMatch).

        A declared type or authority that differs from the survivor's never pairs: merging
        an MR into a national id, or one hospital's MR into another's, is not what HL7's
        A40 means, and a guess here would join two patients' records. Such a message is
        refused (AE 101 on MRG-1) for the sender to correct.
        """
        prior = [
            cx
            for repetition in range(1, len(mrg.repetitions(1)) + 1)
            if (cx := self.cx(mrg, 1, repetition)) is not None
        ]
        if not prior:
            raise self.refuse("101", "MRG", sequence, 1, "prior patient identifier list empty")

        def exact(cx: PersonIdentifier) -> bool:
            return (
                cx.identifier_type == survivor.identifier_type
                and cx.assigning_authority == survivor.assigning_authority
            )

        retired = next((cx for cx in prior if exact(cx)), None)
        match = IdentifierMatch.EXACT
        if retired is None:
            found = next((cx for cx in prior if _compatible(cx, survivor)), None)
            if found is None:
                raise self.refuse(
                    "101",
                    "MRG",
                    sequence,
                    1,
                    "no MRG-1 repetition has the identifier type (CX-5) and assigning "
                    "authority (CX-4) of the surviving PID-3 identifier",
                )
            retired = PersonIdentifier(
                value=found.value,
                assigning_authority=found.assigning_authority or survivor.assigning_authority,
                identifier_type=found.identifier_type or survivor.identifier_type,
            )
            match = IdentifierMatch.UNSTATED
        if retired == survivor:
            raise self.refuse(
                "205",
                "MRG",
                sequence,
                1,
                "MRG-1 names the surviving PID-3 identifier: a record cannot merge into itself",
            )
        return retired, match

    # -- links ----------------------------------------------------------------------

    def link_pair(self, trigger: LinkTrigger) -> tuple[PersonDemographics, PersonDemographics]:
        pids = [(n, s) for n, s in enumerate(self.segments, start=1) if s.name == "PID"]
        if len(pids) < 2:
            raise self.refuse(
                "100",
                "PID",
                len(self.segments),
                None,
                f"ADT^{trigger} needs two PID segments, the records to (un)link",
            )
        if len(pids) > 2:
            raise self.refuse(
                "100", "PID", pids[2][0], None, f"ADT^{trigger} carries two PID segments, not more"
            )
        (first_sequence, first), (second_sequence, second) = pids
        return self.demographics(first, first_sequence), self.demographics(second, second_sequence)


def _compatible(cx: PersonIdentifier, survivor: PersonIdentifier) -> bool:
    """Same kind of identifier, or a kind one side leaves unstated (empty CX-5 / CX-4)."""

    def agree(mine: str, theirs: str) -> bool:
        return not mine or not theirs or mine == theirs

    return agree(cx.identifier_type, survivor.identifier_type) and agree(
        cx.assigning_authority, survivor.assigning_authority
    )
