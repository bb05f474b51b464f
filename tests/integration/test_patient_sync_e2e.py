"""Patient-sync end to end: python-hl7's `mllp_send` -> the MLLP gateway -> Temporal -> the
worker -> the project's FHIR server. Every assertion is on the Patient the server holds.
Each test has its own patient (MRN 8xxx), so its exchange is its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import ActivityEnvironment

from activities.patient_sync import (
    InterpretPersonInput,
    PatientActivities,
    WritePatientInput,
    interpret_person_message,
)
from adapters.fhir import FhirClient
from mappings.fhir_identifiers import identifier_query
from models.messages import InboundMessage
from models.review import ReviewAction, ReviewDecision
from tests.support.engine import Engine, audit_rows, mllp_send, running_engine
from tests.support.patient_sync import (
    PATIENT_SYSTEM,
    PSEUDONYM_KEY,
    Person,
    patient_sync_id,
    patients_with_mrn,
    person_message,
    wait_applied,
    wait_patient,
)

CLOSE_AFTER_SECONDS = 3.0


@pytest.fixture(scope="module")
async def engine(temporal_client: Client, fhir_base_url: str) -> AsyncIterator[Engine]:
    async with running_engine(
        temporal_client,
        fhir_base_url,
        pseudonym_key=PSEUDONYM_KEY,
        patient_sync_close_after_seconds=CLOSE_AFTER_SECONDS,
        task_queue="careweave-patient-sync-e2e",
    ) as running:
        yield running


async def send(engine: Engine, *messages: str) -> None:
    acks = await mllp_send(engine.mllp_port, list(messages))
    assert [ack.split("MSA|")[1][:2] for ack in acks] == ["AA"] * len(messages), acks


def registered_elsewhere(mrn: str) -> dict[str, Any]:
    """The Patient as a registration portal and an MPI wrote it: a mobile phone, a second
    identifier and a link, none of which any A31 carries."""
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": PATIENT_SYSTEM, "value": mrn},
            {"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"REG-{mrn}"},
        ],
        "name": [{"family": "Testpatient", "given": ["Alma"]}],
        "birthDate": "1972-04-15",
        "gender": "female",
        "address": [{"use": "home", "line": ["1 Old Rd"], "city": "Springfield"}],
        "telecom": [{"system": "phone", "value": "+1 555 0100", "use": "mobile"}],
        "link": [{"other": {"display": "record in the regional registry"}, "type": "seealso"}],
    }


async def test_a28_creates_the_patient(engine: Engine) -> None:
    person = Person("MRN8301", other_identifiers="999-00-8301^^^SSA^SS")
    await send(engine, person_message(person, "PS-8301-1", "A28"))

    patient = await wait_patient(engine.fhir, "MRN8301")
    assert [(i["system"], i["value"]) for i in patient["identifier"]] == [
        (PATIENT_SYSTEM, "MRN8301"),
        ("urn:careweave:patient-id:SSA", "999-00-8301"),
    ]
    assert patient["name"] == [
        {"use": "official", "family": "Testpatient", "given": ["Alma", "B"], "prefix": ["Ms"]}
    ]
    assert (patient["birthDate"], patient["gender"]) == ("1972-04-15", "female")
    assert patient["address"][0]["city"] == "Springfield"
    assert patient["telecom"] == [{"system": "phone", "value": "+1 (217) 5550100", "use": "home"}]

    workflow_id = patient_sync_id("MRN8301")
    assert await engine.wait_for_status(workflow_id, "created") == "created"
    applied = await wait_applied(engine.handle(workflow_id), 1)
    assert [(a["control_id"], a["outcome"], a["patient"]) for a in applied] == [
        ("PS-8301-1", "created", f"Patient/{patient['id']}")
    ]
    # No MRN or name in the id; the audit trail has the receipt, the transform and the push.
    assert "MRN8301" not in workflow_id and "Testpatient" not in workflow_id
    rows = await audit_rows(engine, workflow_id, lambda rows: len(rows) >= 3)
    assert [(row.action, row.resource) for row in rows] == [
        ("receive", "ADT^A28 PS-8301-1"),
        ("transform", "interpret_person_message"),
        ("push", "write_patient"),
    ]


async def test_a31_keeps_what_other_sources_wrote(engine: Engine) -> None:
    written = registered_elsewhere("MRN8302")
    existing = await engine.fhir.conditional_create(
        written, identifier_query(written["identifier"][0])
    )
    moved = Person(
        "MRN8302",
        name="Newname^Alma",
        address="7 New Ave^^Shelbyville^IL^62565^USA^H",
        home_phone="",
    )
    await send(engine, person_message(moved, "PS-8302-1", "A31"))

    patient = await wait_patient(
        engine.fhir, "MRN8302", lambda p: p["name"][0].get("family") == "Newname"
    )
    assert patient["id"] == existing["id"]
    # What the A31 speaks for: the legal name and the home address.
    assert patient["name"] == [{"use": "official", "family": "Newname", "given": ["Alma"]}]
    assert patient["address"] == [
        {
            "use": "home",
            "line": ["7 New Ave"],
            "city": "Shelbyville",
            "state": "IL",
            "postalCode": "62565",
            "country": "USA",
        }
    ]
    # What it does not: kept exactly as the other sources wrote it.
    assert patient["telecom"] == written["telecom"]
    assert patient["link"] == written["link"]
    assert patient["identifier"][:2] == written["identifier"]
    assert (patient["birthDate"], patient["gender"]) == ("1972-04-15", "female")
    history = await engine.fhir.history("Patient", existing["id"])
    assert len(history) == 2  # the other source's version, then one merge


async def test_two_a31_in_a_row_apply_in_order(engine: Engine) -> None:
    person = Person("MRN8303")
    await send(
        engine,
        person_message(person, "PS-8303-1", "A28"),
        person_message(person.with_(name="Second^Alma"), "PS-8303-2", "A31"),
        person_message(person.with_(name="Third^Alma", sex="U"), "PS-8303-3", "A31"),
    )
    patient = await wait_patient(
        engine.fhir, "MRN8303", lambda p: p["name"][0].get("family") == "Third"
    )
    assert patient["gender"] == "unknown"
    # Every version on the server, oldest first: created, then each A31 in arrival order.
    # (Sorted by lastUpdated: the in-memory repository's history order flips on each read.)
    history = await engine.fhir.history("Patient", patient["id"])
    history.sort(key=lambda version: version["meta"]["lastUpdated"])
    stamps = [version["meta"]["lastUpdated"] for version in history]
    assert len(set(stamps)) == len(stamps)
    assert [version["name"][0]["family"] for version in history] == [
        "Testpatient",
        "Second",
        "Third",
    ]
    applied = await wait_applied(engine.handle(patient_sync_id("MRN8303")), 3)
    assert [(a["control_id"], a["outcome"]) for a in applied] == [
        ("PS-8303-1", "created"),
        ("PS-8303-2", "updated"),
        ("PS-8303-3", "updated"),
    ]


async def test_empty_fields_erase_nothing_and_explicit_null_clears(engine: Engine) -> None:
    person = Person("MRN8304", business_phone="^WPN^PH^^^217^5550199")
    await send(engine, person_message(person, "PS-8304-1", "A28"))
    created = await wait_patient(engine.fhir, "MRN8304")
    assert len(created["telecom"]) == 2
    # Empty PID-7, PID-8, PID-11: kept. PID-13 "": the home phone goes, the work one stays.
    await send(
        engine,
        person_message(
            person.with_(birth_date="", sex="", address="", home_phone='""', business_phone=""),
            "PS-8304-2",
        ),
    )
    patient = await wait_patient(engine.fhir, "MRN8304", lambda p: len(p["telecom"]) == 1)
    assert patient["telecom"] == [{"system": "phone", "value": "(217) 5550199", "use": "work"}]
    assert patient["birthDate"] == created["birthDate"]
    assert patient["gender"] == created["gender"]
    assert patient["address"] == created["address"]


async def test_a_message_the_parser_refuses_waits_for_a_reviewer(engine: Engine) -> None:
    person = Person("MRN8305")
    workflow_id = patient_sync_id("MRN8305")
    await send(engine, person_message(person.with_(birth_date="1972-04-15"), "PS-8305-1", "A28"))
    pending = await engine.wait_for_review(workflow_id)
    assert pending["reason"] == "invalid-message"
    assert "PID-7" in pending["summary"]
    assert "1972" not in pending["summary"]
    # Nothing was written while it waits; the next message queues behind it.
    await send(engine, person_message(person.with_(name="Later^Alma"), "PS-8305-2", "A31"))
    assert await patients_with_mrn(engine.fhir, "MRN8305") == []

    await engine.decide_review(
        workflow_id,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.REJECT,
            reason="registration will resend it with a valid date",
            reviewer="reviewer-1",
        ),
    )
    patient = await wait_patient(engine.fhir, "MRN8305")
    assert patient["name"][0]["family"] == "Later"
    applied = await wait_applied(engine.handle(workflow_id), 2)
    assert [(a["control_id"], a["outcome"]) for a in applied] == [
        ("PS-8305-1", "dismissed"),
        ("PS-8305-2", "created"),
    ]


async def test_the_exchange_completes_after_its_quiet_period(engine: Engine) -> None:
    person = Person("MRN8306")
    workflow_id = patient_sync_id("MRN8306")
    await send(engine, person_message(person, "PS-8306-1", "A28"))
    handle = engine.client.get_workflow_handle(workflow_id)
    summary = await handle.result()
    assert summary["status"] == "created"
    first_run = (await handle.describe()).run_id
    assert (await handle.describe()).status is WorkflowExecutionStatus.COMPLETED
    # The next message starts a new run of the same exchange; the merge finds the Patient.
    await send(engine, person_message(person.with_(name="Again^Alma"), "PS-8306-2", "A31"))
    patient = await wait_patient(
        engine.fhir, "MRN8306", lambda p: p["name"][0].get("family") == "Again"
    )
    assert len(await patients_with_mrn(engine.fhir, "MRN8306")) == 1
    assert (await engine.client.get_workflow_handle(workflow_id).describe()).run_id != first_run
    assert patient["identifier"][0]["value"] == "MRN8306"


async def test_two_patients_with_one_mrn_go_to_a_reviewer(engine: Engine) -> None:
    # Two records carry the MRN (a duplicate nobody merged yet): which one the update is
    # for is a person's call, not a retry's.
    for other in ("DUP-A", "DUP-B"):
        duplicate = registered_elsewhere("MRN8307")
        duplicate["identifier"][1]["value"] = other
        await engine.fhir.conditional_create(
            duplicate, identifier_query(duplicate["identifier"][1])
        )
    workflow_id = patient_sync_id("MRN8307")
    await send(engine, person_message(Person("MRN8307", name="Newname^Alma"), "PS-8307-1"))
    pending = await engine.wait_for_review(workflow_id)
    assert pending["reason"] == "fhir-rejected"
    assert "HTTP 412" in pending["summary"]
    await engine.decide_review(
        workflow_id,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.REJECT,
            reason="duplicate records sent to the MPI team",
            reviewer="reviewer-1",
        ),
    )
    assert await engine.wait_for_status(workflow_id, "dismissed") == "dismissed"
    for patient in await patients_with_mrn(engine.fhir, "MRN8307"):
        assert patient["name"] == [{"family": "Testpatient", "given": ["Alma"]}]


class _RacedFhirClient(FhirClient):
    """The real client, but another source writes the Patient (for real, on the server) just
    before our first version-aware update: the race If-Match exists for."""

    def __init__(self, base_url: str, competing_write: dict[str, Any]) -> None:
        super().__init__(base_url)
        self._competing_write = competing_write
        self.raced = False

    async def update(
        self, resource: dict[str, Any], *, version_id: str | None = None
    ) -> dict[str, Any]:
        if not self.raced:
            self.raced = True
            current = await self.read("Patient", str(resource["id"]))
            await super().update({**current, **self._competing_write})
        return await super().update(resource, version_id=version_id)


async def test_a_write_between_our_read_and_update_is_kept(fhir_base_url: str) -> None:
    written = registered_elsewhere("MRN8308")
    email = {"telecom": [*written["telecom"], {"system": "email", "value": "a@portal.example"}]}
    async with _RacedFhirClient(fhir_base_url, email) as fhir:
        existing = await fhir.conditional_create(
            written, identifier_query(written["identifier"][0])
        )
        changes = interpret_person_message(
            InterpretPersonInput(
                message=InboundMessage(
                    text=person_message(
                        Person("MRN8308", name="Newname^Alma", home_phone=""), "PS-8308-1"
                    ),
                    message_type="ADT^A31",
                    control_id="PS-8308-1",
                    sending_facility="GENHOSP",
                    received_at=datetime.now(UTC),
                ),
                mapping_version="v1",
            )
        )
        outcome = await ActivityEnvironment().run(
            PatientActivities(fhir).write_patient, WritePatientInput(changes=changes)
        )
        patient = await fhir.read("Patient", existing["id"])
    assert fhir.raced
    assert (outcome.outcome, outcome.version_conflicts) == ("updated", 1)
    # Both writes are on the server: the other source's email and our name.
    assert patient["telecom"] == email["telecom"]
    assert patient["name"][0]["family"] == "Newname"
