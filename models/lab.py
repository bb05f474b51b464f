"""Canonical lab order and result events, as the order-to-result exchange sees them.

These models sit between the HL7 v2 adapter and the FHIR builders. They are
frozen and JSON-serializable so Temporal's pydantic data converter can carry
them through workflow history (encrypted by the payload codec: PHI lives in
``PatientRef``). Values are already unescaped (``\\T\\`` is ``&``) and kept
verbatim otherwise: nothing here is interpreted as markup or code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

# PatientRef lives with the other PID models; every lab reader imports it from here.
from models.demographics import PatientRef as PatientRef
from models.demographics import PersonDemographics

Priority = Literal["stat", "asap", "routine"]
Comparator = Literal["<", ">", "<=", ">="]
ValueKind = Literal["quantity", "string", "coded", "absent"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CodedConcept(_Frozen):
    """A CE/CWE: code, display text, coding system (``LN``, ``99USI``, ``L``, ...).

    ``alternate_*`` are CWE-4..6: many labs send their local code there beside
    LOINC (or LOINC beside a local code), and either may be the one we map.
    """

    code: str
    text: str = ""
    system: str = ""
    alternate_code: str = ""
    alternate_text: str = ""
    alternate_system: str = ""


class OrderingProvider(_Frozen):
    """ORC-12 / OBR-16: the clinician who asked for the test. With an id, the work queue
    that receives the result; ``id`` is "" for a requester known by name only."""

    id: str
    family_name: str = ""
    given_name: str = ""
    assigning_authority: str = ""


class LabOrder(_Frozen):
    """One ORC/OBR order group of an ORM^O01 or OML^O21."""

    control_id: str
    sending_facility: str
    order_control: str
    placer_order_number: str | None
    placer_namespace: str = ""
    filler_order_number: str | None
    filler_namespace: str = ""
    priority: Priority = "routine"
    requested_test: CodedConcept
    ordered_at: datetime | None = None
    patient: PatientRef
    # Everything the PID says, for a Patient the order may have to create (None in runs
    # recorded before it was read, or when a PID date could not be read).
    person: PersonDemographics | None = None
    ordering_provider: OrderingProvider | None = None

    @property
    def is_cancel(self) -> bool:
        """ORC-1 = CA (cancel request) or OC (order cancelled) ends the order."""
        return self.order_control in ("CA", "OC")


class LabObservation(_Frozen):
    """One OBX of a result.

    ``value_kind`` says which value field is meaningful. ``non_numeric_in_nm``
    marks an NM/SN OBX-5 that was not a number (e.g. ``see note``): it travels
    as a string and must never be published as a quantity.
    """

    set_id: str
    value_type: str
    code: CodedConcept
    value_kind: ValueKind
    numeric_value: float | None = None
    comparator: Comparator | None = None
    string_value: str | None = None
    coded_value: CodedConcept | None = None
    non_numeric_in_nm: bool = False
    units: str = ""
    reference_range_low: float | None = None
    reference_range_high: float | None = None
    reference_range_text: str = ""
    abnormal_flags: tuple[str, ...] = ()
    result_status: str = ""
    observed_at: datetime | None = None
    # NTE-3 comments that follow this OBX, unescaped (one note per NTE, its repetitions
    # joined by line breaks).
    notes: tuple[str, ...] = ()
    # OBX-23 (XON name): the lab that performed this test, when not the sending one.
    performing_organization: str = ""


class LabSpecimen(_Frozen):
    """SPM (v2.5+) or OBR-15 (v2.3 SPS): what was collected, from which body site, when it
    was collected (SPM-17 / OBR-7) and received (SPM-18 / OBR-14), by whom (OBR-10)."""

    type: CodedConcept | None = None
    body_site: CodedConcept | None = None
    collected_at: datetime | None = None
    received_at: datetime | None = None
    # OBR-10's name as text: collectors rarely have an id a FHIR Practitioner could carry.
    collector: str = ""


class LabResult(_Frozen):
    """One OBR group of an ORU^R01 with its OBX observations."""

    control_id: str
    sending_facility: str
    placer_order_number: str | None
    placer_namespace: str = ""
    filler_order_number: str | None
    filler_namespace: str = ""
    obr_set_id: str = ""
    universal_service_id: CodedConcept
    result_status: str
    observed_at: datetime | None = None
    reported_at: datetime | None = None
    observations: tuple[LabObservation, ...]
    patient: PatientRef
    person: PersonDemographics | None = None
    ordering_provider: OrderingProvider | None = None
    # NTE-3 comments on the OBR itself (before its first OBX).
    notes: tuple[str, ...] = ()
    # None when the message says nothing of the specimen (no SPM, OBR-15 empty).
    specimen: LabSpecimen | None = None
    # OBR-32 (principal result interpreter) as a name, or its id when no name is sent.
    results_interpreter: str = ""

    @property
    def report_key(self) -> str:
        """Which report this is, across its versions: the filler number (the lab issues
        the report), else the placer number. Carries order numbers: workflow state only."""
        if self.filler_order_number:
            return f"filler|{self.filler_namespace}|{self.filler_order_number}"
        return f"placer|{self.placer_namespace}|{self.placer_order_number}"

    @property
    def is_correction(self) -> bool:
        """OBR-25 = C, or any OBX-11 = C: a corrected result replaces the one already filed."""
        return self.result_status == "C" or any(
            obs.result_status == "C" for obs in self.observations
        )


class StructuralProblem(_Frozen):
    """Why a message cannot be used, naming the segment/field and never a value (no PHI)."""

    segment_id: str
    field_position: int | None = None
    text: str
