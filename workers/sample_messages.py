"""Synthetic HL7 v2.5.1 lab messages for the demo feed and the end-to-end tests.

All people and numbers here are invented. Local codes use the coding system
"L" (the sending lab's own codes), mapped to LOINC by mappings/order_to_result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

HOSPITAL_APP, HOSPITAL = "CAREEHR", "GENHOSP"
LAB_APP, LAB = "LABSYS", "CENTRALLAB"


@dataclass(frozen=True)
class ResultValue:
    local_code: str
    text: str
    value: str
    units: str
    reference_range: str
    flag: str = ""
    value_type: str = "NM"
    coding_system: str = "L"


@dataclass(frozen=True)
class SamplePatient:
    mrn: str = "MRN100234"
    family: str = "Testpatient"
    given: str = "Alma"
    birth_date: str = "19720415"
    sex: str = "F"


@dataclass(frozen=True)
class SampleOrder:
    placer_order_number: str
    local_code: str = "BMP"
    text: str = "Basic metabolic panel"
    priority: str = "R"  # ORC-7.6 / TQ1-9: S stat, A asap, R routine
    patient: SamplePatient = field(default_factory=SamplePatient)
    provider_id: str = "1234567893"
    provider_family: str = "Welby"
    provider_given: str = "Marcus"


def _ts(when: datetime | None) -> str:
    return (when or datetime(2026, 11, 25, 8, 30)).strftime("%Y%m%d%H%M%S")


def _msh(
    app: str,
    facility: str,
    to_app: str,
    to_facility: str,
    message_type: str,
    control_id: str,
    when: datetime | None,
) -> str:
    return (
        f"MSH|^~\\&|{app}|{facility}|{to_app}|{to_facility}|{_ts(when)}||{message_type}|"
        f"{control_id}|P|2.5.1|||AL|NE"
    )


def _pid(patient: SamplePatient) -> str:
    return (
        f"PID|1||{patient.mrn}^^^{HOSPITAL}^MR||{patient.family}^{patient.given}||"
        f"{patient.birth_date}|{patient.sex}"
    )


def _provider(order: SampleOrder) -> str:
    return f"{order.provider_id}^{order.provider_family}^{order.provider_given}^^^^^^NPI"


def lab_order(
    order: SampleOrder, control_id: str, *, order_control: str = "NW", when: datetime | None = None
) -> str:
    """ORM^O01: a new order (NW) or its cancel (CA) from the hospital's EHR to the lab."""
    segments = [
        _msh(HOSPITAL_APP, HOSPITAL, LAB_APP, LAB, "ORM^O01^ORM_O01", control_id, when),
        _pid(order.patient),
        f"PV1|1|O|OPD^101^1^{HOSPITAL}",
        f"ORC|{order_control}|{order.placer_order_number}^{HOSPITAL}|||||^^^{_ts(when)}^^"
        f"{order.priority}||{_ts(when)}|||{_provider(order)}",
        f"OBR|1|{order.placer_order_number}^{HOSPITAL}||{order.local_code}^{order.text}^L|||"
        f"{_ts(when)}|||||||||{_provider(order)}|||||||||||^^^{_ts(when)}^^{order.priority}",
    ]
    return "\r".join(segments) + "\r"


def lab_result(
    order: SampleOrder,
    control_id: str,
    values: list[ResultValue],
    *,
    result_status: str = "F",
    filler_order_number: str = "",
    when: datetime | None = None,
) -> str:
    """ORU^R01 from the lab back to the hospital; result_status C marks a correction."""
    filler = filler_order_number or f"F{order.placer_order_number}"
    segments = [
        _msh(LAB_APP, LAB, HOSPITAL_APP, HOSPITAL, "ORU^R01^ORU_R01", control_id, when),
        _pid(order.patient),
        f"ORC|RE|{order.placer_order_number}^{HOSPITAL}|{filler}^{LAB}|||||||||{_provider(order)}",
        f"OBR|1|{order.placer_order_number}^{HOSPITAL}|{filler}^{LAB}|"
        f"{order.local_code}^{order.text}^L|||{_ts(when)}|||||||||{_provider(order)}||||||"
        f"{_ts(when)}|||{result_status}",
    ]
    for set_id, value in enumerate(values, start=1):
        segments.append(
            f"OBX|{set_id}|{value.value_type}|{value.local_code}^{value.text}^{value.coding_system}"
            f"||{value.value}|{value.units}|{value.reference_range}|{value.flag}|||"
            f"{result_status}|||{_ts(when)}"
        )
    return "\r".join(segments) + "\r"


SODIUM = ResultValue("NA", "Sodium", "140", "mmol/L", "136-145", "N")
POTASSIUM = ResultValue("K", "Potassium", "4.1", "mmol/L", "3.5-5.1", "N")
POTASSIUM_CRITICAL = ResultValue("K", "Potassium", "6.9", "mmol/L", "3.5-5.1", "HH")
GLUCOSE_HIGH = ResultValue("GLU", "Glucose", "182", "mg/dL", "70-99", "H")
UNMAPPED = ResultValue("ZZX9", "Experimental marker", "12", "U/L", "0-20", "N")


# -- ADT (discharge sync) ------------------------------------------------------------

ADT_APP = "CAREEHR"


@dataclass(frozen=True)
class SampleDiagnosis:
    set_id: str
    code: str
    text: str
    diagnosis_type: str = "F"  # DG1-6: A admitting, W working, F final


@dataclass(frozen=True)
class SampleStay:
    visit_number: str
    patient: SamplePatient = field(default_factory=SamplePatient)
    disposition: str = "01"  # PV1-36, HL7 table 0112: 01 discharged home
    diagnoses: tuple[SampleDiagnosis, ...] = (
        SampleDiagnosis("1", "I10", "Essential (primary) hypertension", "A"),
        SampleDiagnosis("2", "E11.9", "Type 2 diabetes mellitus without complications"),
    )


def _pv1(stay: SampleStay, *, discharged: bool) -> str:
    fields = [""] * 46
    fields[1] = "1"
    fields[2] = "I"
    fields[3] = "W4^412^B^GENHOSP"
    fields[7] = "1234567893^Welby^Marcus^^^^^^NPI"
    fields[8] = "1122334455^Kildare^James^^^^^^NPI"
    fields[17] = "1234567893^Welby^Marcus^^^^^^NPI"
    fields[19] = f"{stay.visit_number}^^^{HOSPITAL}^VN"
    fields[36] = stay.disposition if discharged else ""
    fields[44] = "20261120101500"
    fields[45] = "20261125094500" if discharged else ""
    return "PV1|" + "|".join(fields[1:]).rstrip("|")


def _dg1(diagnosis: SampleDiagnosis) -> str:
    return (
        f"DG1|{diagnosis.set_id}||{diagnosis.code}^{diagnosis.text}^I10||"
        f"20261120|{diagnosis.diagnosis_type}"
    )


def adt_event(
    stay: SampleStay,
    control_id: str,
    trigger: str,
    *,
    when: datetime | None = None,
    discharge_fields: bool | None = None,
) -> str:
    """ADT^A03 (discharge), ^A13 (cancel discharge) or ^A08 (update) for one stay.

    PV1-36 and PV1-45 are sent on A03 and A08 unless ``discharge_fields`` says otherwise
    (many EHRs send an A08 after the discharge without them).
    """
    structure = {"A03": "ADT_A03", "A13": "ADT_A01", "A08": "ADT_A01"}[trigger]
    discharged = trigger in ("A03", "A08") if discharge_fields is None else discharge_fields
    segments = [
        _msh(
            ADT_APP, HOSPITAL, "CAREWEAVE", HOSPITAL, f"ADT^{trigger}^{structure}", control_id, when
        ),
        f"EVN|{trigger}|{_ts(when)}",
        _pid(stay.patient),
        _pv1(stay, discharged=discharged),
        *(_dg1(diagnosis) for diagnosis in stay.diagnoses),
    ]
    return "\r".join(segments) + "\r"


# -- ADT person updates (patient sync) ---------------------------------------------------

REGISTRATION_APP = "REGSYS"


def person_update(
    patient: SamplePatient,
    control_id: str,
    trigger: str = "A31",
    *,
    address: str = "12 Elm St^^Springfield^IL^62701^USA^H",
    home_phone: str = "^PRN^PH^^1^217^5550100",
    when: datetime | None = None,
) -> str:
    """ADT^A28 (add person) or ^A31 (update person), structure ADT_A05, from registration."""
    return (
        "\r".join(
            [
                _msh(
                    REGISTRATION_APP,
                    HOSPITAL,
                    "CAREWEAVE",
                    HOSPITAL,
                    f"ADT^{trigger}^ADT_A05",
                    control_id,
                    when,
                ),
                f"EVN|{trigger}|{_ts(when)}",
                f"{_pid(patient)}|||{address}||{home_phone}",
                "PV1|1|N",
            ]
        )
        + "\r"
    )


def patient_merge(
    survivor: SamplePatient,
    retired: SamplePatient,
    control_id: str,
    *,
    address: str = "12 Elm St^^Springfield^IL^62701^USA^H",
    home_phone: str = "^PRN^PH^^1^217^5550100",
    when: datetime | None = None,
) -> str:
    """ADT^A40 (merge patient), structure ADT_A39, from registration: ``retired``'s record
    (MRG-1) merged into ``survivor``'s (PID-3)."""
    return (
        "\r".join(
            [
                _msh(
                    REGISTRATION_APP,
                    HOSPITAL,
                    "CAREWEAVE",
                    HOSPITAL,
                    "ADT^A40^ADT_A39",
                    control_id,
                    when,
                ),
                f"EVN|A40|{_ts(when)}",
                f"{_pid(survivor)}|||{address}||{home_phone}",
                f"MRG|{retired.mrn}^^^{HOSPITAL}^MR",
            ]
        )
        + "\r"
    )


# -- imaging: the RIS's order and the radiologist's report (the lab samples with OBR-24 and
# OBR-18 set), for the demo and the imaging tests.

# A narrative radiology finding, LOINC-coded (no local code to map or review).
RADIOLOGY_FINDING = ResultValue(
    "18782-3",
    "Radiology Study observation (narrative)",
    "No acute cardiopulmonary findings.",
    "",
    "",
    value_type="TX",
    coding_system="LN",
)


def with_obr_field(text: str, position: int, value: str) -> str:
    segments = text.split("\r")
    for index, segment in enumerate(segments):
        if segment.startswith("OBR|"):
            fields = segment.split("|")
            fields += [""] * (position + 1 - len(fields))
            fields[position] = value
            segments[index] = "|".join(fields)
    return "\r".join(segments)


def ct_order(placer_order_number: str, mrn: str = SamplePatient.mrn) -> SampleOrder:
    return SampleOrder(
        placer_order_number,
        local_code="CTCHEST",
        text="CT chest without contrast",
        patient=SamplePatient(mrn=mrn),
    )


def imaging_order_message(
    order: SampleOrder, accession: str, control_id: str, *, order_control: str = "NW"
) -> str:
    """The RIS's ORM^O01: OBR-24 CT (an imaging section), the accession in OBR-18."""
    text = lab_order(order, control_id, order_control=order_control)
    return with_obr_field(with_obr_field(text, 24, "CT"), 18, accession)


def radiology_report_message(order: SampleOrder, accession: str, control_id: str) -> str:
    """The radiologist's final ORU^R01 for the same accession (OBR-24 RAD)."""
    text = lab_result(order, control_id, [RADIOLOGY_FINDING])
    return with_obr_field(with_obr_field(text, 24, "RAD"), 18, accession)
