"""The exchange registry: what it derives, and what it refuses to register."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.hl7v2.header import DecodedMessage, MessageRejected, decode_message
from exchanges import discharge_sync, order_to_result
from exchanges.registry import REGISTRY
from exchanges.sdk import (
    SUPPORTED_VERSIONS,
    ExchangeDefinitionError,
    ExchangeRegistry,
    MessageType,
    pseudonym,
    search_attribute_type,
)
from tests.support.patient_sync import Person, person_message
from workers import sample_messages as sm
from workers.cli import app
from workflows.discharge_sync import DischargeSync
from workflows.order_to_result import OrderToResult

PROJECT = Path(__file__).resolve().parents[2]


def decoded_with_any_type(text: str) -> DecodedMessage:
    """Decoded by a gateway that lets every type through, so the registry answers it."""
    header_type = text.split("\r", 1)[0].split("|")[8].split("^")
    return decode_message(
        text.encode(),
        supported_types={header_type[0]: frozenset({header_type[1]})},
        supported_versions=SUPPORTED_VERSIONS,
        required_segments={},
    )


def retyped(text: str, message_type: str) -> str:
    msh, rest = text.split("\r", 1)
    fields = msh.split("|")
    fields[8] = message_type
    return "\r".join(["|".join(fields), rest])


def test_an_unregistered_message_type_gets_ar_200_from_the_registry() -> None:
    message = decoded_with_any_type(retyped(sm.lab_order(sm.SampleOrder("PO-1"), "C1"), "SIU^S12"))
    with pytest.raises(MessageRejected) as refused:
        REGISTRY.route(message, pseudonym_key=b"k")
    assert (refused.value.ack_code, refused.value.error_code) == ("AR", "200")
    assert refused.value.field_position == 9


def test_an_unregistered_event_of_a_known_type_gets_ar_201_not_a_discharge() -> None:
    # An ADT the registry does not know used to become a discharge.
    a03 = sm.adt_event(sm.SampleStay("V-1"), "C2", "A03")
    message = decoded_with_any_type(retyped(a03, "ADT^A01"))
    with pytest.raises(MessageRejected) as refused:
        REGISTRY.route(message, pseudonym_key=b"k")
    assert (refused.value.ack_code, refused.value.error_code) == ("AR", "201")


def test_the_gateway_accepts_exactly_what_the_exchanges_declare() -> None:
    declared = {
        (message_type.code, event)
        for spec in REGISTRY.exchanges
        for message_type in spec.accepts
        for event in message_type.events
    }
    derived = {(code, e) for code, events in REGISTRY.supported_types.items() for e in events}
    assert derived == declared
    assert REGISTRY.required_segments["ORU^R01"] == ("PID", "OBR", "OBX")
    assert REGISTRY.required_segments["ADT^A03"] == ("PID", "PV1")


def test_two_exchanges_cannot_claim_the_same_message() -> None:
    thief = dataclasses.replace(
        discharge_sync.EXCHANGE, name="thief", accepts=(MessageType("ORU", ("R01",)),)
    )
    with pytest.raises(ExchangeDefinitionError, match=r"ORU\^R01 is claimed by both"):
        ExchangeRegistry([order_to_result.EXCHANGE, thief])


def test_a_declared_signal_must_be_a_signal_of_the_exchange_workflow() -> None:
    wrong = dataclasses.replace(
        order_to_result.EXCHANGE, signals=(DischargeSync.adt_event,), workflow=OrderToResult
    )
    with pytest.raises(ExchangeDefinitionError, match="adt_event"):
        ExchangeRegistry([wrong])


def test_a_registered_name_is_used_once() -> None:
    with pytest.raises(ExchangeDefinitionError, match="registered twice"):
        ExchangeRegistry([order_to_result.EXCHANGE, order_to_result.EXCHANGE])


def test_each_exchange_has_its_four_homes_under_one_name() -> None:
    for spec in REGISTRY.exchanges:
        home = spec.home
        assert (PROJECT / "workflows" / f"{home}.py").is_file(), spec.name
        assert (PROJECT / "activities" / f"{home}.py").is_file(), spec.name
        assert (PROJECT / "mappings" / home).is_dir(), spec.name
        assert (PROJECT / "exchanges" / f"{home}.py").is_file(), spec.name
        assert spec.mapping_version in spec.mapping_versions(), spec.name


def test_every_activity_has_a_declared_audit_action() -> None:
    actions = REGISTRY.audit_actions()
    assert actions["publish_lab_result"] == "push"
    assert actions["interpret_adt"] == "transform"
    assert actions["closed_discharge"] == "access"
    assert actions["interpret_person_message"] == "transform"
    assert actions["write_patient"] == "push"


def test_person_updates_route_to_one_patient_sync_per_patient() -> None:
    assert REGISTRY.required_segments["ADT^A28"] == ("PID",)
    assert REGISTRY.required_segments["ADT^A31"] == ("PID",)
    alma = Person("MRN8201", name="Testpatient^Alma")
    added = REGISTRY.route(
        decoded_with_any_type(person_message(alma, "R-1", "A28")), pseudonym_key=b"k"
    )
    updated = REGISTRY.route(
        decoded_with_any_type(person_message(alma, "R-2", "A31")), pseudonym_key=b"k"
    )
    other = REGISTRY.route(
        decoded_with_any_type(person_message(Person("MRN8202"), "R-3", "A31")),
        pseudonym_key=b"k",
    )
    key = pseudonym(b"k", "patient", "GENHOSP", "MRN8201")
    assert added.exchange == "patient-sync"
    assert added.workflow_id == updated.workflow_id == f"patient-sync/GENHOSP/{key}"
    assert other.workflow_id != added.workflow_id
    assert "MRN8201" not in added.workflow_id and "Testpatient" not in added.workflow_id
    # The same patient key as the patient's discharges (their delivery queues).
    discharge = REGISTRY.route(
        decoded_with_any_type(
            sm.adt_event(sm.SampleStay("V-1", patient=sm.SamplePatient(mrn="MRN8201")), "D", "A03")
        ),
        pseudonym_key=b"k",
    )
    assert discharge.key.patient_key == added.key.patient_key


def test_a_person_update_without_pid_3_gets_ae_101() -> None:
    text = person_message(Person("MRN8203"), "R-4").replace("MRN8203^^^GENHOSP^MR", "")
    with pytest.raises(MessageRejected) as refused:
        REGISTRY.route(decoded_with_any_type(text), pseudonym_key=b"k")
    assert (refused.value.ack_code, refused.value.error_code) == ("AE", "101")
    assert refused.value.field_position == 3


def test_docker_compose_registers_the_registry_search_attributes() -> None:
    compose = (PROJECT / "docker-compose.yml").read_text()
    listed = re.search(r"for attribute in ([A-Za-z= ]+); do", compose)
    assert listed is not None, "docker-compose.yml no longer lists search attributes"
    registered = [
        f"{key.name}={search_attribute_type(key)}" for key in REGISTRY.search_attributes()
    ]
    assert listed.group(1).split() == registered, (
        "docker-compose.yml's search attributes differ from the registry's: "
        "update temporal-register-search-attributes"
    )


def test_careweave_exchanges_lists_every_registered_exchange() -> None:
    result = CliRunner().invoke(app, ["exchanges"])
    assert result.exit_code == 0, result.output
    for spec in REGISTRY.exchanges:
        assert spec.name in result.output
        for message_type in spec.accepts:
            for name in message_type.names():
                assert name in result.output
    assert "ordered-delivery" in result.output
    assert "v1, v2, v3 (new" in result.output  # discharge sync's mapping versions
