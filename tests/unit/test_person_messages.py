"""The A28/A31 reader: every PID field patient-sync maps, HL7's explicit null, refusals."""

from __future__ import annotations

import pytest

from adapters.hl7v2.adt_messages import parse_adt_event
from adapters.hl7v2.person_messages import PersonMessageInvalid, parse_person_update
from models.person import ContactNumber, PersonAddress, PersonName, PersonTrigger
from tests.support.patient_sync import Person, person_message

ALMA = Person(
    "MRN8001",
    other_identifiers="999-00-8001^^^SSA^SS",
    name="Testpatient&van^Alma^B^Jr^Ms^MD~Tess^Al^^^^^N",
    address="12 Elm St&Elm St&12^Apt 3^Springfield^IL^62701^USA^H^^Sangamon",
    home_phone="^PRN^PH^^1^217^5550100~^NET^Internet^alma@example.org",
    business_phone="(217)555-0199^WPN^PH",
)


def test_a28_reads_every_mapped_pid_field() -> None:
    update = parse_person_update(person_message(ALMA, "PS-1", "A28"))
    assert update.trigger is PersonTrigger.ADD
    assert (update.control_id, update.sending_facility) == ("PS-1", "GENHOSP")
    # The key identifier: MR preferred, exactly as the lab and discharge readers choose it.
    assert (update.patient.identifier, update.patient.assigning_authority) == (
        "MRN8001",
        "GENHOSP",
    )
    assert [(i.value, i.assigning_authority, i.identifier_type) for i in update.identifiers] == [
        ("MRN8001", "GENHOSP", "MR"),
        ("999-00-8001", "SSA", "SS"),
    ]
    assert update.names == (
        PersonName(family="Testpatient", given=("Alma", "B"), prefix="Ms", suffix=("Jr", "MD")),
        PersonName(family="Tess", given=("Al",), name_type="N"),
    )
    assert (update.birth_date, update.sex) == ("1972-04-15", "F")
    assert update.addresses == (
        PersonAddress(
            lines=("12 Elm St", "Apt 3"),
            city="Springfield",
            state="IL",
            postal_code="62701",
            country="USA",
            district="Sangamon",
            address_type="H",
        ),
    )
    assert update.home_contacts == (
        ContactNumber(use_code="PRN", equipment_type="PH", number="+1 (217) 5550100"),
        ContactNumber(use_code="NET", equipment_type="Internet", email="alma@example.org"),
    )
    # XTN-1, the formatted number most senders still fill, when XTN-5..7 are empty.
    assert update.business_contacts == (
        ContactNumber(use_code="WPN", equipment_type="PH", number="(217)555-0199"),
    )
    assert update.explicit_nulls == ()


def test_a31_with_lf_line_ends_and_escapes() -> None:
    text = person_message(Person("MRN8002", name="O\\T\\Brien^Ann"), "PS-2", "A31")
    update = parse_person_update(text.replace("\r", "\n"))
    assert update.trigger is PersonTrigger.UPDATE
    assert update.names[0].family == "O&Brien"


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("1972", "1972"),
        ("197204", "1972-04"),
        ("19720415", "1972-04-15"),
        ("197204151030-0500", "1972-04-15"),
        ("", ""),
    ],
)
def test_birth_date_keeps_the_precision_sent(sent: str, read: str) -> None:
    update = parse_person_update(person_message(Person("MRN8003", birth_date=sent), "PS-3"))
    assert update.birth_date == read


@pytest.mark.parametrize("sent", ["1972041", "19721315", "1972-04-15", "April 1972"])
def test_an_unreadable_birth_date_is_refused_without_its_value(sent: str) -> None:
    with pytest.raises(PersonMessageInvalid) as refused:
        parse_person_update(person_message(Person("MRN8004", birth_date=sent), "PS-4"))
    assert str(refused.value) == "PID-7: not a valid HL7 date"


def test_empty_fields_and_explicit_nulls_are_told_apart() -> None:
    empty = parse_person_update(
        person_message(Person("MRN8005", birth_date="", sex="", address="", home_phone=""), "PS-5")
    )
    assert empty.explicit_nulls == ()
    nulled = parse_person_update(
        person_message(
            Person(
                "MRN8005",
                name='""',
                birth_date='""',
                sex='""',
                address='""',
                home_phone='""',
                business_phone='""',
            ),
            "PS-6",
        )
    )
    assert nulled.explicit_nulls == ("PID-5", "PID-7", "PID-8", "PID-11", "PID-13", "PID-14")
    assert (nulled.names, nulled.birth_date, nulled.sex, nulled.addresses) == ((), "", "", ())
    assert (nulled.home_contacts, nulled.business_contacts) == ((), ())


def test_a_component_sent_as_explicit_null_reads_empty() -> None:
    update = parse_person_update(
        person_message(Person("MRN8006", address='1 Main St^^""^IL^^^H'), "PS-7")
    )
    assert update.addresses[0].city == ""
    assert update.explicit_nulls == ()


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda m: m.replace("ADT^A31^ADT_A05", "ADT^A01^ADT_A01"), "MSH-9: trigger event"),
        (lambda m: m.replace("ADT^A31^ADT_A05", "ORU^R01^ORU_R01"), "MSH-9: not an ADT"),
        (lambda m: m.replace("MRN8007^^^GENHOSP^MR", ""), "PID-3: patient identifier"),
        (lambda m: "\r".join(s for s in m.split("\r") if not s.startswith("PID")), "PID: PID"),
    ],
)
def test_refusals_name_the_field_and_never_a_value(edit: object, error: str) -> None:
    text = person_message(Person("MRN8007", name="Secretname^Alma"), "PS-8")
    with pytest.raises(PersonMessageInvalid) as refused:
        parse_person_update(edit(text))  # type: ignore[operator]
    assert str(refused.value).startswith(error)
    assert "MRN8007" not in str(refused.value) and "Secretname" not in str(refused.value)


def test_a_person_update_is_not_a_discharge_event() -> None:
    # The discharge reader refuses A28/A31; the registry never routes them there.
    with pytest.raises(ValueError, match="MSH-9"):
        parse_adt_event(person_message(ALMA, "PS-9", "A28"))
