"""Canonical ADT events for the discharge-sync exchange (A03, A13, A08).

Between the HL7 v2 adapter (adapters/hl7v2/adt_messages.py) and the FHIR builders
(mappings/discharge_sync/). Frozen and JSON-serializable for Temporal's pydantic converter; the
patient fields are PHI and live only in payloads, never in ids, search attributes or logs.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from models.lab import PatientRef


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AdtTrigger(StrEnum):
    DISCHARGE = "A03"
    CANCEL_DISCHARGE = "A13"
    UPDATE = "A08"


class Practitioner(_Frozen):
    """An XCN (PV1-7/8/17): id, family, given, and the id's assigning authority."""

    identifier: str
    family_name: str = ""
    given_name: str = ""
    assigning_authority: str = ""


class Diagnosis(_Frozen):
    """One DG1: ``set_id`` (DG1-1) keys it within the encounter."""

    set_id: str
    code: str  # DG1-3.1
    display: str = ""  # DG1-3.2 (else DG1-4)
    coding_system: str = ""  # DG1-3.3 as sent: I10, I10C, ICD10CM, ...
    diagnosis_type: str = ""  # DG1-6: A admitting, W working, F final
    recorded_at: datetime | None = None  # DG1-5
    priority: int | None = None  # DG1-15: 1 is the primary diagnosis; 0 means not ranked


class DischargeOnRecord(_Frozen):
    """The discharge a discharge-sync exchange has delivered for its encounter (PHI: payloads only).

    Not parsed from a message: the exchange keeps it from the A03 (and any forwarded A08
    that carried PV1-45 / PV1-36) and hands it to the FHIR mapping with a later A08, so an
    A08 without PV1-45 does not reopen a finished Encounter.
    """

    ended_at: datetime | None = None  # PV1-45, else EVN-2 / MSH-7 of the A03
    disposition: str = ""  # PV1-36

    @classmethod
    def of(cls, event: AdtEvent) -> DischargeOnRecord:
        return cls(
            ended_at=event.discharge_time or event.event_time,
            disposition=event.discharge_disposition,
        )

    def amended_by(self, event: AdtEvent) -> DischargeOnRecord:
        """What is on record after ``event`` (an A08) was delivered: its values win when sent."""
        return DischargeOnRecord(
            ended_at=event.discharge_time or self.ended_at,
            disposition=event.discharge_disposition or self.disposition,
        )


class AdtEvent(_Frozen):
    trigger: AdtTrigger
    control_id: str  # MSH-10
    sending_facility: str  # MSH-4
    event_time: datetime | None = None  # EVN-2, else MSH-7
    patient: PatientRef
    visit_number: str = ""  # PV1-19.1
    visit_number_authority: str = ""  # PV1-19.4
    account_number: str = ""  # PID-18.1
    patient_class: str = ""  # PV1-2
    location: str = ""  # PV1-3 as "point^room^bed^facility" components joined with " "
    location_facility: str = ""  # PV1-3.4
    attending: Practitioner | None = None  # PV1-7
    referring: Practitioner | None = None  # PV1-8
    admitting: Practitioner | None = None  # PV1-17
    discharge_disposition: str = ""  # PV1-36 (HL7 table 0112)
    admit_time: datetime | None = None  # PV1-44
    discharge_time: datetime | None = None  # PV1-45
    diagnoses: tuple[Diagnosis, ...] = ()
    # Set by the exchange on an A08 after the discharge it delivered, never by the parser.
    discharge_on_record: DischargeOnRecord | None = None

    @property
    def encounter_number(self) -> str:
        """What keys the exchange: the visit number, else the account number."""
        return self.visit_number or self.account_number


class RoutedEvent(BaseModel):
    """What happened to one ADT event: no PHI (codes, destination names, versions)."""

    event_id: str
    trigger: str
    subscription: str | None
    destinations: list[str]
    routing_version: str
    note: str = ""


class DischargeSyncSummary(BaseModel):
    """A discharge exchange's result. ``discharge`` and ``diagnoses`` (DG1-1, -3, -6 as
    forwarded) are what a later exchange for the same encounter recalls: PHI, payload only."""

    status: str
    events: list[RoutedEvent]
    discharge: DischargeOnRecord | None = None
    diagnoses: list[tuple[str, str, str]] = []


class ClosedDischarge(BaseModel):
    """The discharge a closed exchange of the same encounter left on record."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    discharge: DischargeOnRecord
    diagnoses: tuple[tuple[str, str, str], ...] = ()
