"""Canonical patient-identity events for patient-merge: merges (ADT^A40, and the older
A34, A35, A36, A18), links (A24) and unlinks (A37).

Between the HL7 v2 reader (adapters/hl7v2/merge_messages.py), the outbound builder
(adapters/hl7v2/merge_outbound.py) and the merge workflow. Values are unescaped and
otherwise as sent. Everything here is PHI: payloads only, never ids, search attributes or
logs.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.person import PersonDemographics, PersonIdentifier, PersonName
from models.search import BusinessKeys


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MergeTrigger(StrEnum):
    """The merge events read (HL7 v2.5 chapter 3.6.2); A41/A42 (account, visit) are not."""

    MERGE_PATIENT_IDENTIFIER_LIST = "A40"  # MRG-1 -> PID-3; several PATIENT groups allowed
    MERGE_PATIENT_INFORMATION = "A18"  # the pre-v2.3.1 form of A40: one MRG
    MERGE_PATIENT_IDENTIFIER = "A34"  # MRG-1 -> PID-3 only (backward compatibility)
    MERGE_ACCOUNT = "A35"  # MRG-3 -> PID-18 only
    MERGE_PATIENT_IDENTIFIER_AND_ACCOUNT = "A36"  # MRG-1 -> PID-3 and MRG-3 -> PID-18


class LinkTrigger(StrEnum):
    LINK = "A24"
    UNLINK = "A37"


class IdentifierMatch(StrEnum):
    """How the retired MRG-1 repetition was paired with the surviving PID-3 repetition.

    HL7 pairs MRG-1 with PID-3 "of the same identifier type". A repetition that leaves
    CX-5 (type) or CX-4 (authority) empty does not say it is of another kind, so it is
    taken as the survivor's, and the merge says so: a caller that must be sure (a wrong
    merge is a patient-safety event) sends UNSTATED merges to a reviewer. A repetition that
    declares another type or authority never pairs: the reader refuses the message.
    """

    EXACT = "exact"  # same CX-5 type and CX-4 authority as sent
    UNSTATED = "unstated"  # CX-5 and/or CX-4 empty in MRG-1, taken from the survivor


class PatientMerge(_Frozen):
    """One merge: one MRG applied to the PID of its PATIENT group."""

    # The PID-3 repetition that names the surviving record: the one every exchange keys a
    # patient on (adapters/hl7v2/lab_messages.read_patient: type MR preferred).
    survivor: PersonIdentifier
    # The MRG-1 repetition of the survivor's type and authority, those filled from the
    # survivor when MRG-1 left them empty (see ``identifier_match``). None for an account
    # merge (A35), which retires no patient identifier.
    retired: PersonIdentifier | None
    identifier_match: IdentifierMatch | None
    # MRG-3 prior patient account number and PID-18 the account it merges into.
    prior_account: PersonIdentifier | None = None
    account: PersonIdentifier | None = None
    prior_visit: PersonIdentifier | None = None  # MRG-5 prior visit number
    prior_name: PersonName | None = None  # MRG-7 prior patient name (first repetition)
    # The survivor's PID as patient-sync reads it (adapters/hl7v2/person_messages).
    demographics: PersonDemographics


class MergeMessage(_Frozen):
    """What one merge message asks for: its merges, in message order (applied in that order)."""

    kind: Literal["merge"] = "merge"
    trigger: MergeTrigger
    control_id: str  # MSH-10
    sending_facility: str  # MSH-4
    event_time: datetime | None = None  # EVN-2, else MSH-7
    event_reason: str = ""  # EVN-4 (table 0062)
    operator_id: str = ""  # EVN-5.1: who registered the merge
    merges: tuple[PatientMerge, ...]


class LinkMessage(_Frozen):
    """A24 (link) or A37 (unlink): two PIDs naming records of one person, no MRG."""

    kind: Literal["link"] = "link"
    trigger: LinkTrigger
    control_id: str  # MSH-10
    sending_facility: str  # MSH-4
    event_time: datetime | None = None  # EVN-2, else MSH-7
    event_reason: str = ""  # EVN-4
    operator_id: str = ""  # EVN-5.1
    first: PersonDemographics  # the first PID
    second: PersonDemographics  # the second PID


# Discriminated by ``kind``: an activity result decodes to the right model.
IdentityMessage = Annotated[MergeMessage | LinkMessage, Field(discriminator="kind")]


class MergeOutcome(_Frozen):
    """What became of one merge (or link) of a message: no PHI."""

    control_id: str  # MSH-10
    message_type: str
    merge_index: int  # its MRG's place in the message
    # merged | rejected | already-merged | recorded | linked | unlinked | dismissed |
    # not-applicable
    outcome: str
    note: str = ""
    # What an undo needs (no PHI): the Provenance of each FHIR step, in the order written
    # (the Patients, then each page of re-pointed resources), and the identity index event.
    provenances: tuple[str, ...] = ()
    index_event: int | None = None
    # The merge rules' version that wrote those Provenances (an undo reads them with it).
    mapping_version: str = "v1"


class MergeAnnouncement(_Frozen):
    """A merge as decided, or its undo, for the destinations subscribed to it (ADT^A40 /
    ADT^A37, built with hl7apy when delivered). PHI: payloads only."""

    trigger: Literal["A40", "A37"]
    merge: PatientMerge
    # MSH-7 / EVN-2: the merge's recorded time, so a resend carries the same bytes.
    message_time: datetime
    event_reason: str = ""  # EVN-4
    operator_id: str = ""  # EVN-5.1


class AnnouncedMerge(_Frozen):
    """What an undo needs to announce itself where the merge was announced. PHI (the merge):
    a payload only, read through the merge exchange's ``announced_merge`` query."""

    # The survivor's per-patient delivery queue key (``patient_pseudonym``): the queue its
    # A08/A03 and the A40 went through.
    patient_key: str
    # The A40's delivery event id; the A37's is derived from it.
    event_id: str
    announcement: MergeAnnouncement


class UnmergeInput(_Frozen):
    """Undo one merge of a patient-merge exchange (no PHI: ids, counts, a reason; the
    announced merge, when there is one, is a codec-encrypted payload like every input)."""

    merge_exchange: str  # the patient-merge workflow id
    merge: MergeOutcome
    actor: str  # who asked (an operator or reviewer)
    reason: str
    mapping_version: str
    # Set when the merge was announced downstream (A40): the undo then announces an A37 on
    # the same queues. None for merges of runs from before announcements.
    announced: AnnouncedMerge | None = None


class UnmergeSummary(_Frozen):
    patients_restored: bool
    references_restored: int
    references_not_restored: int
    index_event: int | None = None


# The signal an open exchange of a retired patient is told a merge by (order-to-result).
PATIENT_MERGED_SIGNAL = "patient_merged"


class PatientMergedNotice(_Frozen):
    """To an exchange still open for a patient a merge retired: its patient is now the
    survivor, so a message naming the survivor is its own patient's. PHI: a signal payload
    only (codec-encrypted)."""

    merge_exchange: str  # the patient-merge workflow id (no PHI)
    retired: PersonIdentifier
    survivor: PersonIdentifier
    # The survivor's PID as the merge message gave it (every PID-3 repetition).
    survivor_demographics: PersonDemographics
    # The survivor's PatientKey search pseudonyms: the exchange is then found by either number.
    survivor_keys: BusinessKeys = BusinessKeys()
