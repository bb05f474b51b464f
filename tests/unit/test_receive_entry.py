"""The gateway's RECEIVE audit row: sender and message ids only, bounded in length."""

from __future__ import annotations

import dataclasses

from adapters.hl7v2.header import MessageHeader, decode_message
from exchanges.registry import REGISTRY
from exchanges.sdk import SUPPORTED_VERSIONS
from models.audit import AuditAction, AuditOutcome
from workers import sample_messages as sm
from workers.intake import receive_entry

SUPPORTED_TYPES = REGISTRY.supported_types
REQUIRED_SEGMENTS = REGISTRY.required_segments


def header_of(message: str) -> MessageHeader:
    return decode_message(
        message.encode(),
        supported_types=SUPPORTED_TYPES,
        supported_versions=SUPPORTED_VERSIONS,
        required_segments=REQUIRED_SEGMENTS,
    ).header


def test_an_accepted_message_names_its_sender_and_ids_not_its_patient() -> None:
    message = sm.lab_order(sm.SampleOrder("RCV-1"), "RCV-1-O")
    entry = receive_entry(
        header_of(message), peer="127.0.0.1:4000", ack_code="AA", detail="", exchange="x/y"
    )
    assert entry.action is AuditAction.RECEIVE
    assert entry.outcome is AuditOutcome.SUCCESS
    assert entry.actor == f"{sm.HOSPITAL_APP}^{sm.HOSPITAL}"
    assert entry.resource == "ORM^O01 RCV-1-O"
    assert "Testpatient" not in entry.model_dump_json()


def test_a_refusal_without_a_header_names_the_peer() -> None:
    entry = receive_entry(None, peer="127.0.0.1:4000", ack_code="AR", detail="100 quarantined")
    assert entry.outcome is AuditOutcome.REFUSED
    assert entry.actor == "peer 127.0.0.1:4000"
    assert entry.detail == "AR 100 quarantined"


def test_oversized_sender_fields_are_cut_not_refused() -> None:
    header = dataclasses.replace(
        header_of(sm.lab_order(sm.SampleOrder("RCV-2"), "RCV-2-O")),
        sending_application="A" * 500,
        control_id="9" * 1000,
    )
    entry = receive_entry(header, peer="p", ack_code="AE", detail="x" * 900)
    assert len(entry.actor) == 200
    assert entry.resource is not None and len(entry.resource) == 300
    assert len(entry.detail) == 500
