"""ADT^A03/^A13/^A08 parsing on the real corpus and on synthetic messages (no server)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapters.hl7v2.adt_messages import AdtMessageInvalid, parse_adt_event
from models.discharge import AdtTrigger, Diagnosis, Practitioner

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus" / "adt"

DISCHARGE_SYNC_FILES = sorted(
    p.name
    for p in CORPUS.glob("adt-a*.hl7")
    if p.name.startswith(("adt-a03", "adt-a08", "adt-a13"))
)


def corpus(name: str) -> str:
    return (CORPUS / name).read_bytes().decode("utf-8")


def tz(hours: int, minutes: int) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


# --- a synthetic stay, one field per knob ---------------------------------------------------

DG1_HYPERTENSION = "DG1|1||I10^Essential (primary) hypertension^I10C||20261120101500|A|||||||||1"
DG1_DIABETES = "DG1|2||E11.9^Type 2 diabetes mellitus without complications^I10||20261125|F"


def adt(
    trigger: str = "A03",
    *,
    structure: str = "",
    evn: str | None = "EVN|A03|20261125094600-0500",
    pid3: str = "SSN123^^^SSA^SS~MRN100234^^^GENHOSP^MR",
    name: str = "Testpatient^Alma",
    pid18: str = "ACC900^^^GENHOSP^AN",
    pv1_19: str = "V-77^^^GENHOSP^VN",
    pv1_36: str = "01",
    pv1_45: str = "20261125094500",
    diagnoses: tuple[str, ...] = (DG1_HYPERTENSION, DG1_DIABETES),
    with_pv1: bool = True,
    with_pid: bool = True,
) -> str:
    message_type = f"ADT^{trigger}" + (f"^{structure}" if structure else "")
    pv1 = [""] * 46
    pv1[1] = "1"
    pv1[2] = "I"
    pv1[3] = "W4^412^B^GENHOSP&2.16.840.1.113883.19.1&ISO^^^MAIN^4"
    pv1[7] = "1234567893^Welby^Marcus^^^Dr^^^NPI&2.16.840.1.113883.4.6&ISO"
    pv1[8] = "1122334455^Kildare^James^^^^^^NPI"
    pv1[17] = "5566778899^Casey^Ben"
    pv1[19] = pv1_19
    pv1[36] = pv1_36
    pv1[44] = "20261120101500"
    pv1[45] = pv1_45
    segments = [
        f"MSH|^~\\&|CAREEHR|GENHOSP|CAREWEAVE|GENHOSP|20261125094700||{message_type}|C-1|P|2.5.1",
        *([evn] if evn is not None else []),
        *([f"PID|1||{pid3}||{name}||19720415|F||||||||||{pid18}"] if with_pid else []),
        *(["PV1|" + "|".join(pv1[1:])] if with_pv1 else []),
        *diagnoses,
    ]
    return "\r".join(segments) + "\r"


# --- the corpus ------------------------------------------------------------------------------


def test_corpus_has_the_discharge_sync_messages_we_expect() -> None:
    assert DISCHARGE_SYNC_FILES == [
        "adt-a03-hapi-1.hl7",
        "adt-a03-msfhirconv-1.hl7",
        "adt-a03-msfhirconv-2.hl7",
        "adt-a08-fhirconverter-2.hl7",
        "adt-a08-msfhirconv-1.hl7",
        "adt-a13-fhirconverter-2.hl7",
        "adt-a13-msfhirconv-1.hl7",
    ]


# (trigger, visit number, visit authority, account number, PV1-45, DG1 codes) as in the files.
CORPUS_FACTS = {
    "adt-a03-hapi-1.hl7": (
        AdtTrigger.DISCHARGE,
        "2008003369",
        "",
        "",
        datetime(2008, 3, 3, 15, 8),
        [],
    ),
    "adt-a03-msfhirconv-1.hl7": (
        AdtTrigger.DISCHARGE,
        "40007716",
        "AccMng",
        "4000776",
        datetime(2015, 2, 9, 11, 34, 19, tzinfo=tz(1, 10)),
        [("1", "422504002", "SCT", "A")],
    ),
    "adt-a03-msfhirconv-2.hl7": (
        AdtTrigger.DISCHARGE,
        "40007716",
        "AccMng",
        "4000776",
        datetime(2015, 2, 9, 11, 34, 19, tzinfo=tz(1, 10)),
        [],
    ),
    "adt-a08-fhirconverter-2.hl7": (AdtTrigger.UPDATE, "40007716", "AccMng", "4000776", None, []),
    "adt-a08-msfhirconv-1.hl7": (
        AdtTrigger.UPDATE,
        "40007716",
        "AccMng",
        "4000776",
        datetime(2015, 2, 9, 11, 34, 19, tzinfo=tz(1, 10)),
        [("1", "422504002", "SCT", "A")],
    ),
    "adt-a13-fhirconverter-2.hl7": (
        AdtTrigger.CANCEL_DISCHARGE,
        "40007716",
        "AccMng",
        "4000776",
        datetime(2015, 2, 8, 11, 34, 19, tzinfo=tz(1, 10)),
        [],
    ),
    "adt-a13-msfhirconv-1.hl7": (
        AdtTrigger.CANCEL_DISCHARGE,
        "40007716",
        "AccMng",
        "4000776",
        None,
        [("1", "422504002", "SCT", "A")],
    ),
}


@pytest.mark.parametrize("name", DISCHARGE_SYNC_FILES)
def test_every_corpus_event_reads_its_keys_times_and_diagnoses(name: str) -> None:
    trigger, visit, authority, account, discharged_at, dg1s = CORPUS_FACTS[name]
    event = parse_adt_event(corpus(name))
    assert event.trigger is trigger
    assert (event.visit_number, event.visit_number_authority) == (visit, authority)
    assert event.account_number == account
    assert event.encounter_number == visit
    assert event.discharge_time == discharged_at
    assert [(d.set_id, d.code, d.coding_system, d.diagnosis_type) for d in event.diagnoses] == dg1s


def test_microsoft_sample_reads_every_mapped_field() -> None:
    event = parse_adt_event(corpus("adt-a03-msfhirconv-1.hl7"))
    assert (event.control_id, event.sending_facility) == ("MSG00001", "GHHSFacility")
    # EVN-2, not MSH-7 (1989) nor EVN-1's stale trigger.
    assert event.event_time == datetime(2029, 8, 1, 7, 6, 24, tzinfo=tz(1, 15))
    patient = event.patient
    # PID-3 repeats; the MR repetition is chosen and CX-4 is an HD (first subcomponent).
    assert (patient.identifier, patient.assigning_authority, patient.identifier_type) == (
        "PATID1234",
        "test1",
        "MR",
    )
    assert (patient.family_name, patient.given_name) == ("EVERYMAN", "ADAM")
    assert (patient.birth_date, patient.sex) == (date(1988, 8, 18), "M")
    assert event.patient_class == "P"
    assert event.location == "HUH AE OMU OMU B Bed 03 HOMERTON UNIVER"
    assert event.location_facility == "HOMERTON UNIVER"
    assert event.attending == Practitioner(
        identifier="1122334",
        family_name="Alaz",
        given_name="Mohammed",
        assigning_authority="PERSONNELt",
    )
    assert event.referring is not None and event.referring.identifier == "C006"
    assert event.admitting is not None
    assert (event.admitting.family_name, event.admitting.assigning_authority) == (
        "DISNEY",
        "AccMgr",
    )
    # PV1-36 here is free text, not a table 0112 code: read as sent.
    assert event.discharge_disposition == "Admitted as Inpatient"
    assert event.admit_time == datetime(2015, 2, 8, 11, 34, 19, tzinfo=tz(1, 10))
    assert event.diagnoses == (
        Diagnosis(
            set_id="1",
            code="422504002",
            display="Ischemic stroke(disorder)",
            coding_system="SCT",
            diagnosis_type="A",
            recorded_at=datetime(2004, 1, 25, 11, 40, 25, tzinfo=tz(4, 20)),
            priority=1,
        ),
    )


def test_hapi_sample_without_mr_takes_the_first_identifier_and_naive_times() -> None:
    event = parse_adt_event(corpus("adt-a03-hapi-1.hl7"))
    assert (event.patient.identifier, event.patient.assigning_authority) == ("5520255", "PK")
    assert event.sending_facility == "SANTER"
    # No offset sent: the sender's local time, kept naive (never assumed UTC).
    assert event.event_time == datetime(2008, 3, 5, 15, 9)
    assert event.event_time.tzinfo is None
    assert event.admit_time is None
    assert event.patient_class == "I"
    assert event.location == "6402DH"
    assert event.referring is None
    assert [p.identifier for p in (event.attending, event.admitting) if p] == ["13936", "5068"]


@pytest.mark.parametrize("name", ["adt-a01-hapi-1.hl7", "adt-a04-fhirconverter-1.hl7"])
def test_other_adt_triggers_are_not_discharge_sync_events(name: str) -> None:
    with pytest.raises(AdtMessageInvalid) as caught:
        parse_adt_event(corpus(name))
    assert (caught.value.segment_id, caught.value.field_position) == ("MSH", 9)


# --- synthetic messages -----------------------------------------------------------------


def test_synthetic_discharge_reads_every_field() -> None:
    event = parse_adt_event(adt())
    assert event.trigger is AdtTrigger.DISCHARGE
    assert (event.control_id, event.sending_facility) == ("C-1", "GENHOSP")
    assert event.event_time == datetime(2026, 11, 25, 9, 46, tzinfo=tz(-5, 0))
    assert event.patient.identifier == "MRN100234"  # the MR repetition, not the first (SS)
    assert event.patient.assigning_authority == "GENHOSP"
    assert (event.visit_number, event.visit_number_authority) == ("V-77", "GENHOSP")
    assert event.account_number == "ACC900"
    assert event.location == "W4 412 B GENHOSP"
    assert event.location_facility == "GENHOSP"
    assert event.attending == Practitioner(
        identifier="1234567893", family_name="Welby", given_name="Marcus", assigning_authority="NPI"
    )
    assert event.admitting == Practitioner(
        identifier="5566778899", family_name="Casey", given_name="Ben"
    )
    assert event.discharge_disposition == "01"
    assert event.admit_time == datetime(2026, 11, 20, 10, 15)
    assert event.discharge_time == datetime(2026, 11, 25, 9, 45)
    assert [(d.set_id, d.code, d.coding_system, d.diagnosis_type) for d in event.diagnoses] == [
        ("1", "I10", "I10C", "A"),
        ("2", "E11.9", "I10", "F"),
    ]
    assert event.diagnoses[0].recorded_at == datetime(2026, 11, 20, 10, 15)
    assert event.diagnoses[0].priority == 1
    assert event.diagnoses[1].priority is None


@pytest.mark.parametrize(
    ("trigger", "structure", "expected"),
    [
        ("A08", "ADT_A01", AdtTrigger.UPDATE),
        ("A08", "", AdtTrigger.UPDATE),
        ("A13", "ADT_A01", AdtTrigger.CANCEL_DISCHARGE),
        ("A03", "ADT_A03", AdtTrigger.DISCHARGE),
    ],
)
def test_trigger_comes_from_msh_9_2_whatever_the_structure(
    trigger: str, structure: str, expected: AdtTrigger
) -> None:
    assert parse_adt_event(adt(trigger, structure=structure)).trigger is expected


def test_discharge_without_pv1_45_is_accepted_and_keeps_the_event_time() -> None:
    event = parse_adt_event(adt(pv1_45=""))
    assert event.discharge_time is None
    assert event.event_time == datetime(2026, 11, 25, 9, 46, tzinfo=tz(-5, 0))


def test_without_evn_the_event_time_is_msh_7() -> None:
    assert parse_adt_event(adt(evn=None)).event_time == datetime(2026, 11, 25, 9, 47)


def test_account_number_keys_the_encounter_when_pv1_19_is_empty() -> None:
    event = parse_adt_event(adt(pv1_19=""))
    assert (event.visit_number, event.account_number, event.encounter_number) == (
        "",
        "ACC900",
        "ACC900",
    )


def test_dg1_display_falls_back_to_dg1_4_and_blank_set_id_to_position() -> None:
    event = parse_adt_event(
        adt(diagnoses=("DG1|1||I10^^I10C", "DG1|||J18.9^^I10C|Pneumonia, unspecified"))
    )
    assert [(d.set_id, d.display) for d in event.diagnoses] == [
        ("1", ""),
        ("2", "Pneumonia, unspecified"),
    ]


def test_escape_sequences_are_resolved() -> None:
    message = adt(
        name="O\\T\\Brien^Mary\\S\\Ann",
        diagnoses=("DG1|1||F10.2\\F\\X^Alcohol \\E\\ dependence\\R\\other^I10",),
    )
    event = parse_adt_event(message)
    assert (event.patient.family_name, event.patient.given_name) == ("O&Brien", "Mary^Ann")
    assert event.diagnoses[0].code == "F10.2|X"
    assert event.diagnoses[0].display == "Alcohol \\ dependence~other"


@pytest.mark.parametrize("separator", ["\n", "\r\n"])
def test_lf_and_crlf_separators_are_accepted(separator: str) -> None:
    event = parse_adt_event(adt().replace("\r", separator))
    assert event.visit_number == "V-77"
    assert [d.code for d in event.diagnoses] == ["I10", "E11.9"]


def test_the_message_own_delimiters_are_honoured() -> None:
    standard = adt()
    custom = standard.replace("|", "#").replace("^", "@").replace("&", "%")
    assert custom.startswith("MSH#@~\\%#")
    event = parse_adt_event(custom)
    assert event.visit_number == "V-77"
    assert event.attending is not None and event.attending.assigning_authority == "NPI"
    assert event.location_facility == "GENHOSP"


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "segment", "field"),
    [
        (adt(with_pv1=False), "PV1", None),
        (adt(with_pid=False), "PID", None),
        (adt(pid3="^^^GENHOSP^MR"), "PID", 3),
        (adt(pv1_19="", pid18=""), "PV1", 19),
        (adt(diagnoses=("DG1|1||^Essential hypertension^I10",)), "DG1", 3),
        (adt(diagnoses=(DG1_HYPERTENSION, DG1_HYPERTENSION)), "DG1", 1),
        (adt(pv1_45="2026139"), "PV1", 45),
        (adt(pv1_45="20261325"), "PV1", 45),
        (adt(evn="EVN|A03|yesterday"), "EVN", 2),
        (adt("A01"), "MSH", 9),
        (adt().replace("ADT^A03", "ORU^R01"), "MSH", 9),
        ("PID|1||MRN1\rPV1|1|I", "MSH", None),
        ("", "MSH", None),
    ],
)
def test_unusable_messages_are_refused_naming_segment_and_field(
    message: str, segment: str, field: int | None
) -> None:
    with pytest.raises(AdtMessageInvalid) as caught:
        parse_adt_event(message)
    err = caught.value
    assert (err.segment_id, err.field_position) == (segment, field)
    assert err.problem.segment_id == segment
    assert err.problem.field_position == field
    assert err.problem.text == err.text
    # No values (PHI) in what reaches Temporal failures and logs.
    for value in ("V-77", "MRN100234", "Testpatient", "ACC900", "Essential"):
        assert value not in str(err)
