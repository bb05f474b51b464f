"""Lab order/result parsing on the real corpus messages (no server, no network)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapters.hl7v2.lab_messages import (
    LabMessageInvalid,
    parse_lab_order,
    parse_lab_orders,
    parse_lab_result,
    parse_lab_results,
    parse_patient,
)
from models.lab import LabResult
from workers import sample_messages as sm

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"


def corpus(name: str) -> str:
    """Decode as the gateway does: MSH-18 8859/1 -> latin-1, else UTF-8; separators to CR."""
    raw = (CORPUS / name).read_bytes()
    text = raw.decode("latin-1" if b"8859/1" in raw.split(b"\r", 1)[0] else "utf-8")
    return text.replace("\r\n", "\r").replace("\n", "\r")


def _message_type(text: str) -> str:
    msh = text.split("\r", 1)[0].split("|")
    return "^".join(msh[8].split("^")[:2])


ORDER_FILES = sorted(
    p.relative_to(CORPUS).as_posix()
    for p in (CORPUS / "orders").glob("*.hl7")
    if _message_type(corpus(p.relative_to(CORPUS).as_posix())) in ("ORM^O01", "OML^O21")
)
RESULT_FILES = sorted(
    p.relative_to(CORPUS).as_posix()
    for p in (CORPUS / "results").glob("*.hl7")
    if _message_type(corpus(p.relative_to(CORPUS).as_posix())) == "ORU^R01"
)

# Corpus messages this layer refuses, and the segment it names. Each is a
# real sample with a structural gap; a guess would file a wrong order/result.
REFUSED = {
    # First ORC/OBR group carries ORC-4 (placer group) only: no placer, no filler.
    "orders/oml-o21-fhirconverter-1.hl7": ("OBR", 2),
    # OBX segments before any OBR (a converter test sample): not attributable.
    "results/oru-r01-msfhirconv-1.hl7": ("OBX", None),
}


def test_corpus_has_the_lab_messages_we_expect() -> None:
    assert len(ORDER_FILES) == 9
    assert len(RESULT_FILES) == 8


@pytest.mark.parametrize("name", ORDER_FILES)
def test_every_corpus_order_parses_or_is_refused_by_name(name: str) -> None:
    if name in REFUSED:
        with pytest.raises(LabMessageInvalid) as refused:
            parse_lab_orders(corpus(name))
        assert (refused.value.segment_id, refused.value.field_position) == REFUSED[name]
        return
    orders = parse_lab_orders(corpus(name))
    assert orders
    for order in orders:
        assert order.placer_order_number or order.filler_order_number
        assert order.requested_test.code
        assert order.patient.identifier


@pytest.mark.parametrize("name", RESULT_FILES)
def test_every_corpus_result_parses_or_is_refused_by_name(name: str) -> None:
    if name in REFUSED:
        with pytest.raises(LabMessageInvalid) as refused:
            parse_lab_results(corpus(name))
        assert (refused.value.segment_id, refused.value.field_position) == REFUSED[name]
        return
    results = parse_lab_results(corpus(name))
    assert results
    for result in results:
        assert result.observations
        # Temporal carries these through its pydantic data converter.
        assert LabResult.model_validate_json(result.model_dump_json()) == result


# --- orders -----------------------------------------------------------------------------


def test_orm_lab_order_reads_placer_filler_and_loinc() -> None:
    order = parse_lab_order(corpus("orders/orm-o01-lab-msfhirconv-1.hl7"))
    assert order.order_control == "NW"
    assert (order.placer_order_number, order.filler_order_number) == ("88502218", "82503246")
    assert order.requested_test.code == "24317-0"
    assert order.requested_test.system == "LN"
    assert order.control_id == "MSGID20060307110114"
    assert order.patient.identifier == "10006579"
    assert order.patient.family_name == "DUCK"
    assert order.patient.birth_date == date(1924, 10, 10)
    assert order.ordered_at == datetime(2014, 10, 6, 9, 29)
    # ORC-12 is empty and OBR-16 names the requester without an id: known by name only.
    assert order.ordering_provider is not None
    assert (order.ordering_provider.id, order.ordering_provider.family_name) == ("", "URO")
    # The whole PID travels with the order, for the Patient it may have to create.
    assert order.person is not None
    assert order.person.patient == order.patient
    assert order.person.birth_date == "1924-10-10"


def test_orm_with_namespaced_numbers_provider_and_offset() -> None:
    order = parse_lab_order(corpus("orders/orm-o01-msfhirconv-1.hl7"))
    assert (order.placer_order_number, order.placer_namespace) == ("1101", "GHHPlacer")
    assert (order.filler_order_number, order.filler_namespace) == ("1201", "GHHFiller")
    assert order.ordering_provider is not None
    assert order.ordering_provider.id == "3850"
    assert order.ordering_provider.family_name == "ORDPROVIDER"
    assert order.ordered_at == datetime(
        2021, 10, 20, 11, 26, tzinfo=timezone(timedelta(hours=2, minutes=15))
    )
    assert order.sending_facility == "GHHSFacility"
    # PID-3 repeats (MR, SS): the MR is the one results are filed against.
    assert order.patient.identifier == "PATID1234"
    assert order.patient.identifier_type == "MR"


def test_orm_with_two_orders_gives_two_and_singular_form_refuses() -> None:
    text = corpus("orders/orm-o01-msfhirconv-3.hl7")
    orders = parse_lab_orders(text)
    assert [o.placer_order_number for o in orders] == ["1101", "2203"]
    assert [o.requested_test.code for o in orders] == ["24725-4", "24590-2"]
    with pytest.raises(LabMessageInvalid) as refused:
        parse_lab_order(text)
    assert refused.value.segment_id == "OBR"


def test_oml_one_orc_two_obr_are_two_orders_with_local_codes() -> None:
    orders = parse_lab_orders(corpus("orders/oml-o21-fhirconverter-2.hl7"))
    assert [(o.requested_test.system, o.requested_test.code) for o in orders] == [
        ("L", "1320"),
        ("L", "1680"),
    ]
    assert {o.placer_order_number for o in orders} == {"ORD723222"}
    assert orders[0].placer_namespace == "2.16.840.1.113883.3.72.5.24"  # EI-3 when EI-2 empty
    assert orders[0].ordering_provider is not None
    assert orders[0].ordering_provider.id == "8075000001"
    assert orders[0].ordering_provider.assigning_authority == "NPI"


def test_oml_priority_from_tq1_and_provider_from_obr16() -> None:
    order = parse_lab_order(corpus("orders/oml-o21-hapi-1.hl7"))
    assert order.priority == "asap"  # TQ1-9 = A
    assert (order.placer_order_number, order.placer_namespace) == ("12345678", "gastric")
    assert order.requested_test.code == "82951"
    assert order.requested_test.system == "C4"
    assert order.ordering_provider is not None
    assert order.ordering_provider.id == "222222"


def test_oml_status_change_carries_filler() -> None:
    order = parse_lab_order(corpus("orders/oml-o21-hapi-2.hl7"))
    assert order.order_control == "SC"
    assert (order.filler_order_number, order.filler_namespace) == ("555", "chemistry")


def test_stat_priority_from_tq1() -> None:
    text = corpus("orders/oml-o21-hapi-1.hl7").replace("TQ1|||||||||A", "TQ1|||||||||S")
    assert parse_lab_order(text).priority == "stat"


def test_cancel_order_control() -> None:
    text = corpus("orders/orm-o01-lab-msfhirconv-1.hl7").replace("ORC|NW|", "ORC|CA|")
    order = parse_lab_order(text)
    assert order.order_control == "CA"
    assert order.is_cancel


def test_non_order_message_is_refused_naming_msh9() -> None:
    with pytest.raises(LabMessageInvalid) as refused:
        parse_lab_orders(corpus("orders/rde-o11-fhirconverter-1.hl7"))
    assert (refused.value.segment_id, refused.value.field_position) == ("MSH", 9)


# --- results ----------------------------------------------------------------------------


def test_nist_lead_result() -> None:
    result = parse_lab_result(corpus("results/oru-r01-nist-1.hl7"))
    assert result.placer_order_number is None
    assert (result.filler_order_number, result.filler_namespace) == ("9700123", "Lab")
    assert result.universal_service_id.code == "10368-9"
    assert result.universal_service_id.alternate_code == "3456543"
    assert result.universal_service_id.alternate_system == "99USI"
    assert result.result_status == "F"
    assert not result.is_correction
    (lead,) = result.observations
    assert lead.value_kind == "quantity"
    assert lead.numeric_value == 50
    assert lead.units == "ug/dL"
    assert lead.abnormal_flags == ("H",)
    assert lead.reference_range_high == 9
    assert lead.reference_range_text.startswith("<9 mcg/dL")
    assert lead.observed_at == datetime(2008, 8, 15, 10, 30, tzinfo=timezone(timedelta(hours=-7)))
    assert result.ordering_provider is not None
    assert result.ordering_provider.id == "1234"


def test_nist_corrected_result() -> None:
    result = parse_lab_result(corpus("results/oru-r01-nist-corrected-1.hl7"))
    assert result.result_status == "C"
    assert result.observations[0].result_status == "C"
    assert result.is_correction
    assert result.filler_order_number == "9700123"
    assert result.observations[0].numeric_value == 25
    assert result.observations[0].units == "ug/dl"  # normalised to UCUM by the mapping


def test_nist_stool_culture_string_results() -> None:
    result = parse_lab_result(corpus("results/oru-r01-nist-2.hl7"))
    assert [(o.code.code, o.string_value) for o in result.observations] == [
        ("6331-3", "Isolated"),
        ("20995-1", "Isolated"),
        ("17576-0", "Not Isolated"),
    ]
    assert [o.set_id for o in result.observations] == ["1", "2", "3"]  # OBX-1 is 1,1,1


def test_cbc_result_values_flags_and_coded_values() -> None:
    result = parse_lab_result(corpus("results/oru-r01-lri-cbc-msfhirconv-1.hl7"))
    assert (result.placer_order_number, result.filler_order_number) == ("ORD666555", "R-991133")
    assert result.universal_service_id.code == "57021-8"
    assert len(result.observations) == 28
    wbc = result.observations[3]
    assert (wbc.code.code, wbc.numeric_value, wbc.units, wbc.abnormal_flags) == (
        "26464-8",
        105600,
        "{cells}/uL",
        ("HH",),
    )
    assert (wbc.reference_range_low, wbc.reference_range_high) == (4300, 10800)
    aniso = result.observations[19]
    assert aniso.value_kind == "coded"
    assert aniso.coded_value is not None
    assert (aniso.coded_value.code, aniso.coded_value.system) == ("260348001", "SCT")
    assert result.observations[25].string_value == "Many spherocytes present."


def test_two_obr_groups_are_two_results() -> None:
    results = parse_lab_results(corpus("results/oru-r01-lab-msfhirconv-1.hl7"))
    assert [r.placer_order_number for r in results] == ["88502218", "855238581"]
    assert [len(r.observations) for r in results] == [5, 5]
    pending = results[0].observations[0]
    assert (pending.value_kind, pending.result_status) == ("absent", "I")
    assert results[0].observations[1].units == "tera.l-1"
    with pytest.raises(LabMessageInvalid):
        parse_lab_result(corpus("results/oru-r01-lab-msfhirconv-1.hl7"))


def test_v24_sn_value_without_comparator() -> None:
    result = parse_lab_result(corpus("results/oru-r01-v24-pythonhl7-1.hl7"))
    glucose = result.observations[0]
    assert (glucose.value_type, glucose.value_kind) == ("SN", "quantity")
    assert glucose.numeric_value == 182
    assert glucose.comparator is None
    assert (glucose.reference_range_low, glucose.reference_range_high) == (70, 105)
    assert result.result_status == ""  # OBR-25 empty in this sample; builders use OBX-11
    assert result.patient.birth_date is None  # PID-7 "196203520" is not a date


def test_cerner_result_alternate_local_code() -> None:
    result = parse_lab_result(corpus("results/oru-r01-cerner-1.hl7"))
    obs = result.observations[0]
    assert (obs.code.code, obs.code.alternate_code, obs.code.alternate_system) == (
        "10368-9",
        "1138",
        "99zzz or L",
    )
    assert obs.reference_range_text == "10.000000"


# --- adversarial set --------------------------------------------------------------------


def test_nonnumeric_nm_values() -> None:
    creatinine, ast, glucose, potassium = parse_lab_result(
        corpus("adversarial/nonnumeric-nm-values.hl7")
    ).observations
    assert (creatinine.value_kind, creatinine.comparator, creatinine.numeric_value) == (
        "quantity",
        "<",
        0.2,
    )
    assert (ast.comparator, ast.numeric_value, ast.abnormal_flags) == (">", 1000, ("HH",))
    assert glucose.value_kind == "string"
    assert glucose.string_value == "see note"
    assert glucose.non_numeric_in_nm
    assert glucose.numeric_value is None
    assert (potassium.value_type, potassium.comparator, potassium.numeric_value) == ("SN", "<", 3.0)
    assert potassium.units == "mmol/L"


def test_escape_sequences_are_unescaped() -> None:
    text = corpus("adversarial/escape-sequences.hl7")
    obs = parse_lab_result(text).observations[0]
    assert obs.reference_range_text == "0.6&1.2 range"
    # The NTE carries every sequence; NTE is not mapped, so its raw text is
    # put into an ST observation to exercise the same reader.
    note = next(s for s in text.split("\r") if s.startswith("NTE")).split("|", 3)[3]
    text = text.replace("NTE|", f"OBX|2|ST|NOTE^Note^L||{note}||||||F\rNTE|")
    note_obs = parse_lab_result(text).observations[1]
    assert note_obs.string_value == (
        "Field sep | component ^ repetition ~ escape \\ hex CR \r highlighted text"
    )


def test_injection_strings_are_kept_verbatim() -> None:
    text = corpus("adversarial/injection-strings.hl7")
    patient = parse_patient(text)
    assert patient.family_name == "O'BRIEN'); DROP TABLE quarantine;--"
    assert patient.given_name == "<script>alert(1)</script>"
    # The same PID inside a result travels unchanged into the canonical model.
    pid = next(s for s in text.split("\r") if s.startswith("PID"))
    result_text = "\r".join(
        pid if s.startswith("PID") else s
        for s in corpus("adversarial/nonnumeric-nm-values.hl7").split("\r")
    )
    assert parse_lab_result(result_text).patient == patient
    with pytest.raises(LabMessageInvalid):
        parse_lab_results(text)  # an ADT^A08 is not a lab result


def test_latin1_declared_names_keep_umlauts() -> None:
    patient = parse_patient(corpus("adversarial/latin1-bytes-declared-8859-1.hl7"))
    assert (patient.family_name, patient.given_name) == ("MÜLLER", "JÖRG")
    assert patient.identifier == "A-200312"


def test_pid_only_message_names_obr() -> None:
    with pytest.raises(LabMessageInvalid) as refused:
        parse_lab_results(corpus("adversarial/pid-only-repetitions-pythonhl7-1.hl7"))
    assert refused.value.segment_id == "OBR"
    assert "OBR" in str(refused.value)


def test_missing_placer_and_filler_is_refused_without_phi() -> None:
    with pytest.raises(LabMessageInvalid) as refused:
        parse_lab_results(corpus("adversarial/missing-placer-and-filler.hl7"))
    assert (refused.value.segment_id, refused.value.field_position) == ("OBR", 2)
    message = str(refused.value)
    assert refused.value.problem.model_dump() == {
        "segment_id": "OBR",
        "field_position": 2,
        "text": refused.value.text,
    }
    for phi in ("A-200311", "TESTPATIENT", "ALEX", "19800101", "WELBY"):
        assert phi not in message


def test_lf_separated_result_parses_after_gateway_normalisation() -> None:
    results = parse_lab_results(corpus("adversarial/lf-separators.hl7"))
    assert [r.placer_order_number for r in results] == ["88502218", "855238581"]


def test_trailing_whitespace_and_empty_segments_are_ignored() -> None:
    result = parse_lab_result(corpus("adversarial/trailing-whitespace-and-empty-segments.hl7"))
    assert result.filler_order_number == "NL-9921"


# --- placer / filler order number: ORC-2/3 of the order's ORC, else OBR-2/3 -------------

_MSH = "MSH|^~\\&|EHR|HOSP|LAB|LABFAC|20240101120000||{type}|CTRL-{type}|P|2.5.1"
_PID = "PID|1||A-1^^^HOSP^MR||DOE^JANE||19800101|F"


def _obr(placer: str, filler: str, *, status: str = "") -> str:
    fields = ["OBR", "1", placer, filler, "2951-2^Sodium^LN", "", "", "20240101120000"]
    fields += [""] * (25 - len(fields) + 1)
    fields[25] = status
    return "|".join(fields)


_OBX = "OBX|1|NM|2951-2^Sodium^LN||140|mmol/L|135-145||||F"


def test_order_numbers_come_from_orc_when_orc_and_obr_differ() -> None:
    text = "\r".join(
        [
            _MSH.format(type="ORM^O01"),
            _PID,
            "ORC|NW|ORC-PLACER^HOSP|ORC-FILLER^LAB",
            _obr("OBR-PLACER^EHR", "OBR-FILLER^LIS"),
        ]
    )
    order = parse_lab_order(text)
    assert (order.placer_order_number, order.placer_namespace) == ("ORC-PLACER", "HOSP")
    assert (order.filler_order_number, order.filler_namespace) == ("ORC-FILLER", "LAB")


def test_result_numbers_come_from_orc_when_orc_and_obr_differ() -> None:
    order = parse_lab_order(
        "\r".join(
            [
                _MSH.format(type="ORM^O01"),
                _PID,
                "ORC|NW|ORC-PLACER^HOSP",
                _obr("OBR-PLACER^EHR", ""),
            ]
        )
    )
    result = parse_lab_result(
        "\r".join(
            [
                _MSH.format(type="ORU^R01"),
                _PID,
                "ORC|RE|ORC-PLACER^HOSP|ORC-FILLER^LAB",
                _obr("OBR-PLACER^EHR", "OBR-FILLER^LIS", status="F"),
                _OBX,
            ]
        )
    )
    assert (result.placer_order_number, result.placer_namespace) == ("ORC-PLACER", "HOSP")
    assert (result.filler_order_number, result.filler_namespace) == ("ORC-FILLER", "LAB")
    # One rule for both: the result names the order it answers.
    assert (result.placer_order_number, result.placer_namespace) == (
        order.placer_order_number,
        order.placer_namespace,
    )


def test_result_without_orc_falls_back_to_obr() -> None:
    result = parse_lab_result(
        "\r".join(
            [
                _MSH.format(type="ORU^R01"),
                _PID,
                _obr("OBR-PLACER^EHR", "OBR-FILLER^LIS", status="F"),
                _OBX,
            ]
        )
    )
    assert (result.placer_order_number, result.placer_namespace) == ("OBR-PLACER", "EHR")
    assert (result.filler_order_number, result.filler_namespace) == ("OBR-FILLER", "LIS")


def test_empty_orc_numbers_fall_back_to_obr_each_on_its_own() -> None:
    text = "\r".join(
        [
            _MSH.format(type="ORM^O01"),
            _PID,
            "ORC|NW|^HOSP|ORC-FILLER^LAB",  # a namespace without a number is no number
            _obr("OBR-PLACER^EHR", "OBR-FILLER^LIS"),
        ]
    )
    order = parse_lab_order(text)
    assert (order.placer_order_number, order.placer_namespace) == ("OBR-PLACER", "EHR")
    assert (order.filler_order_number, order.filler_namespace) == ("ORC-FILLER", "LAB")


def test_each_obr_reads_the_orc_before_it() -> None:
    text = "\r".join(
        [
            _MSH.format(type="ORM^O01"),
            _PID,
            "ORC|NW|FIRST^HOSP",
            _obr("OBR-1^EHR", ""),
            "ORC|NW|",
            _obr("OBR-2^EHR", ""),
        ]
    )
    orders = parse_lab_orders(text)
    assert [(o.placer_order_number, o.placer_namespace) for o in orders] == [
        ("FIRST", "HOSP"),
        ("OBR-2", "EHR"),  # its own ORC has no ORC-2; the first order's is not its own
    ]


def test_corpus_order_whose_orc2_and_obr2_differ_takes_orc2() -> None:
    # ORC-2 987654^EPIC, OBR-2 363463^EPC: the number routing keys the exchange by.
    # (The gateway refuses this file for its wrapped OBR; the parser still reads it.)
    order = parse_lab_order(corpus("adversarial/orm-o01-nodehl7complete-wrapped-1.hl7"))
    assert (order.placer_order_number, order.placer_namespace) == ("987654", "EPIC")
    assert (order.filler_order_number, order.filler_namespace) == ("76543", "EPC")


# --- NTE comments ----------------------------------------------------------------------


def with_notes(message: str) -> str:
    """A two-report ORU with comments: after PID (not a lab comment), on the first OBR,
    on its first OBX (two repetitions, a line break escape), and on the second report's OBX."""
    lines = message.split("\r")
    out: list[str] = []
    obx_seen = 0
    for line in lines:
        out.append(line)
        if line.startswith("PID"):
            out.append("NTE|1||Patient prefers morning draws")
        elif line.startswith("OBR"):
            out.append("NTE|1||Specimen slightly hemolyzed\\.br\\Recollect if K high")
        elif line.startswith("OBX"):
            obx_seen += 1
            if obx_seen == 1:
                out.append("NTE|1||Verified by repeat \\T\\ dilution~Called to ward")
    return "\r".join(out)


def test_nte_comments_belong_to_the_obx_they_follow_or_to_their_obr() -> None:
    order = sm.SampleOrder("NTE-1")
    text = with_notes(sm.lab_result(order, "NTE-1-R", [sm.POTASSIUM, sm.SODIUM]))
    result = parse_lab_result(text)
    assert result.notes == ("Specimen slightly hemolyzed\nRecollect if K high",)
    first, second = result.observations
    assert first.notes == ("Verified by repeat & dilution\nCalled to ward",)
    assert second.notes == ()


def test_an_nte_with_escapes_from_the_adversarial_corpus_is_unescaped() -> None:
    [result] = parse_lab_results(corpus("adversarial/escape-sequences.hl7"))
    [observation] = result.observations
    assert observation.notes == (
        "Field sep | component ^ repetition ~ escape \\ hex CR \r highlighted text",
    )


def with_v23_specimen(message: str) -> str:
    """The message as v2.3 with its specimen in OBR-15 (SPS: source and body site as CEs in
    subcomponents), the collector in OBR-10 and collected/received times in OBR-7/14."""
    lines = message.split("\r")
    for index, line in enumerate(lines):
        fields = line.split("|")
        if fields[0] == "MSH":
            fields[11] = "2.3"
        elif fields[0] == "OBR":
            fields += [""] * (16 - len(fields))
            fields[7] = "202611250700"
            fields[10] = "^Collector^Cara"
            fields[14] = "202611250745"
            fields[15] = "BLD&Blood&HL70070^^^LACF&Left antecubital fossa&HL70163"
        lines[index] = "|".join(fields)
    return "\r".join(lines)
