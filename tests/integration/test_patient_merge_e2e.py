"""Patient merge end to end: python-hl7's `mllp_send` -> the MLLP gateway -> Temporal -> the
worker -> the project's FHIR server and the identity index. Each test has its own
patients (MRN-MRG-xx), so its exchange is its own.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from adapters.pseudonyms import pseudonym
from models.identity import Role
from models.review import ReviewAction, ReviewDecision
from tests.support.api import running_api
from tests.support.engine import Engine, mllp_send, running_engine
from workers import sample_messages as sm
from workers.merge_undo import undo_merge
from workflows.patient_unmerge import unmerge_workflow_id

PSEUDONYM_KEY = "test-merge-pseudonym-key"
PATIENT_SYSTEM = f"urn:careweave:patient-id:{sm.HOSPITAL}"


@pytest.fixture(scope="module")
async def engine(temporal_client: Client, fhir_base_url: str) -> AsyncIterator[Engine]:
    async with running_engine(
        temporal_client,
        fhir_base_url,
        pseudonym_key=PSEUDONYM_KEY,
        patient_merge_close_after_seconds=3.0,
        task_queue="careweave-patient-merge-e2e",
    ) as running:
        yield running


def merge_id(survivor_mrn: str) -> str:
    key = pseudonym(PSEUDONYM_KEY.encode(), "patient", sm.HOSPITAL, survivor_mrn)
    return f"patient-merge/{sm.HOSPITAL}/{key}"


def a40(control_id: str, survivor_mrn: str, retired_mrn: str, birth_date: str) -> str:
    return (
        "\r".join(
            [
                f"MSH|^~\\&|ADT|{sm.HOSPITAL}|CW|CW|20261201090000||ADT^A40^ADT_A39|{control_id}|P|2.5.1",
                "EVN|A40|20261201090000",
                f"PID|1||{survivor_mrn}^^^{sm.HOSPITAL}^MR||Mergeton^Clara^J||{birth_date}|F|||"
                "4 Elm Street^^Springfield^IL^62704||^PRN^PH^^1^217^5550142",
                f"MRG|{retired_mrn}^^^{sm.HOSPITAL}^MR",
            ]
        )
        + "\r"
    )


def patient(mrn: str, birth_date: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": PATIENT_SYSTEM, "value": mrn}],
        "name": [{"use": "official", "family": "Mergeton", "given": ["Clara", "J"]}],
        **({"birthDate": birth_date} if birth_date else {}),
        "gender": "female",
        "address": [
            {"use": "home", "line": ["4 Elm Street"], "city": "Springfield", "postalCode": "62704"}
        ],
        "telecom": [{"system": "phone", "value": "+1 (217) 5550142", "use": "home"}],
    }


async def registered(engine: Engine, mrn: str, birth_date: str) -> dict[str, Any]:
    return await engine.fhir.conditional_create(
        patient(mrn, birth_date), f"identifier={PATIENT_SYSTEM}|{mrn}"
    )


async def observation_of(engine: Engine, patient_id: str, key: str) -> dict[str, Any]:
    return await engine.fhir.conditional_create(
        {
            "resourceType": "Observation",
            "identifier": [{"system": "urn:test:merge-observation", "value": key}],
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "valueQuantity": {"value": 140, "unit": "mmol/L"},
        },
        f"identifier=urn:test:merge-observation|{key}",
    )


async def send(engine: Engine, *messages: str) -> None:
    acks = await mllp_send(engine.mllp_port, list(messages))
    assert [ack.split("MSA|")[1][:2] for ack in acks] == ["AA"] * len(messages), acks


async def test_a_certain_merge_flows_through_and_a_resend_changes_nothing(engine: Engine) -> None:
    survivor = await registered(engine, "MRN-MRG-01A", "1958-07-21")
    retired = await registered(engine, "MRN-MRG-01B", "1958-07-21")
    observation = await observation_of(engine, retired["id"], "mrg-01")

    await send(engine, a40("MRG-01-1", "MRN-MRG-01A", "MRN-MRG-01B", "19580721"))
    wid = merge_id("MRN-MRG-01A")
    await engine.wait_for_status(wid, "merged")

    old = await engine.fhir.read("Patient", retired["id"])
    assert old["active"] is False
    assert old["link"] == [
        {"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}
    ]
    new = await engine.fhir.read("Patient", survivor["id"])
    assert {"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"} in new["link"]
    assert {(i["value"], i.get("use")) for i in new["identifier"]} >= {("MRN-MRG-01B", "old")}
    moved = await engine.fhir.read("Observation", observation["id"])
    assert moved["subject"]["reference"] == f"Patient/{survivor['id']}"
    # Nothing deleted: the retired Patient's earlier version is still readable.
    history = await engine.fhir.history("Patient", retired["id"])
    assert len(history) == 2
    assert any(version.get("active") is not False for version in history)
    # One Provenance per step: the two Patients, then the one page of re-pointed resources;
    # the page's names the Observation's new version (what an undo reads).
    outcomes: list[dict[str, Any]] = await engine.handle(wid).query("merge_outcomes")
    [merged] = [o for o in outcomes if o["control_id"] == "MRG-01-1"]
    patients_ref, page_ref = merged["provenances"]
    patients_step = await engine.fhir.read(*patients_ref.split("/"))
    assert {t["reference"].split("/_history/")[0] for t in patients_step["target"]} == {
        f"Patient/{retired['id']}",
        f"Patient/{survivor['id']}",
    }
    page_step = await engine.fhir.read(*page_ref.split("/"))
    assert [t["reference"] for t in page_step["target"]] == [
        f"Observation/{observation['id']}/_history/{moved['meta']['versionId']}"
    ]

    # A result that arrives later for the merged-away number lands on the survivor.
    order = sm.SampleOrder("MRG-01-LAB", patient=sm.SamplePatient(mrn="MRN-MRG-01B"))
    await send(
        engine, sm.lab_order(order, "MRG-01-O"), sm.lab_result(order, "MRG-01-R", [sm.SODIUM])
    )
    await engine.wait_for_status(engine.lab_workflow_id(order.placer_order_number), "final")
    [report] = await engine.fhir.search(
        "DiagnosticReport", {"patient": f"Patient/{survivor['id']}"}
    )
    assert report["status"] == "final"

    # The same merge again (a resend with a new MSH-10, as a downtime replay would send):
    # nothing is written a second time.
    await send(engine, a40("MRG-01-2", "MRN-MRG-01A", "MRN-MRG-01B", "19580721"))
    outcomes = await _outcome_of(engine, wid, "MRG-01-2")
    assert outcomes == "already-merged"
    assert len(await engine.fhir.history("Patient", retired["id"])) == 2
    assert len(await engine.fhir.history("Observation", observation["id"])) == 2


async def test_a_birth_date_conflict_waits_for_a_reviewer_who_rejects(engine: Engine) -> None:
    await registered(engine, "MRN-MRG-02A", "1958-07-21")
    retired = await registered(engine, "MRN-MRG-02B", "1971-03-02")
    await send(engine, a40("MRG-02-1", "MRN-MRG-02A", "MRN-MRG-02B", "19580721"))
    wid = merge_id("MRN-MRG-02A")
    pending = await engine.wait_for_review(wid)
    assert pending["reason"] == "uncertain-merge"
    assert "birth_date" in str(pending["summary"])
    assert "MRN-MRG" not in str(pending["summary"])  # no PHI in what reaches lists and logs
    await engine.decide_review(
        wid,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.REJECT,
            reason="different people: birth dates differ on the ID card",
            reviewer="reviewer-11",
        ),
    )
    await engine.wait_for_status(wid, "merge-rejected")
    unchanged = await engine.fhir.read("Patient", retired["id"])
    assert "link" not in unchanged and unchanged.get("active") is not False
    assert len(await engine.fhir.history("Patient", retired["id"])) == 1


async def test_an_approved_uncertain_merge_is_applied(engine: Engine) -> None:
    survivor = await registered(engine, "MRN-MRG-03A", "1958-07-21")
    # Registered without a birth date: a match cannot do without one (father and son).
    retired = await registered(engine, "MRN-MRG-03B", "")
    await send(engine, a40("MRG-03-1", "MRN-MRG-03A", "MRN-MRG-03B", "19580721"))
    wid = merge_id("MRN-MRG-03A")
    pending = await engine.wait_for_review(wid)
    assert pending["reason"] == "uncertain-merge"
    assert "birth_date missing" in str(pending["summary"])
    await engine.decide_review(
        wid,
        ReviewDecision(
            review_id=str(pending["review_id"]),
            action=ReviewAction.APPROVE,
            reason="same person: registration typo in the birth date",
            reviewer="reviewer-11",
        ),
    )
    await engine.wait_for_status(wid, "merged")
    old = await engine.fhir.read("Patient", retired["id"])
    assert old["link"][0]["other"]["reference"] == f"Patient/{survivor['id']}"


async def test_account_and_visit_merges_are_refused_by_name(engine: Engine) -> None:
    message = a40("MRG-04-1", "MRN-MRG-04A", "MRN-MRG-04B", "19580721").replace(
        "ADT^A40^ADT_A39", "ADT^A42^ADT_A39"
    )
    [ack] = await mllp_send(engine.mllp_port, [message])
    assert "MSA|AR" in ack
    assert "A42" in ack and "201" in ack


async def _outcome_of(engine: Engine, wid: str, control_id: str) -> str:
    for _ in range(100):
        outcomes: list[dict[str, Any]] = await engine.handle(wid).query("merge_outcomes")
        found = [o["outcome"] for o in outcomes if o["control_id"] == control_id]
        if found:
            return str(found[-1])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no outcome for {control_id}")


async def test_undo_restores_both_records_and_every_reference(engine: Engine) -> None:
    survivor = await registered(engine, "MRN-MRG-05A", "1958-07-21")
    retired = await registered(engine, "MRN-MRG-05B", "1958-07-21")
    observation = await observation_of(engine, retired["id"], "mrg-05")
    before_survivor = await engine.fhir.read("Patient", survivor["id"])
    await send(engine, a40("MRG-05-1", "MRN-MRG-05A", "MRN-MRG-05B", "19580721"))
    wid = merge_id("MRN-MRG-05A")
    await engine.wait_for_status(wid, "merged")

    summary = await undo_merge(
        engine.client,
        wid,
        reason="registration merged the wrong twin",
        actor="ops-1",
        task_queue=engine.settings.task_queue,
    )
    assert summary.patients_restored
    assert (summary.references_restored, summary.references_not_restored) == (1, 0)
    restored = await engine.fhir.read("Patient", retired["id"])
    assert "link" not in restored and "active" not in restored
    survivor_now = await engine.fhir.read("Patient", survivor["id"])
    assert survivor_now.get("link") is None
    assert survivor_now["identifier"] == before_survivor["identifier"]
    moved_back = await engine.fhir.read("Observation", observation["id"])
    assert moved_back["subject"]["reference"] == f"Patient/{retired['id']}"
    # Both the merge and its undo stay in the version history.
    assert len(await engine.fhir.history("Patient", retired["id"])) == 3
    # Asking again changes nothing: the same undo answers.
    again = await undo_merge(
        engine.client, wid, reason="again", actor="ops-1", task_queue=engine.settings.task_queue
    )
    assert again == summary
    assert len(await engine.fhir.history("Patient", retired["id"])) == 3


async def test_an_order_waiting_at_merge_time_completes_under_the_survivor(
    engine: Engine,
) -> None:
    survivor = await registered(engine, "MRN-MRG-06A", "1958-07-21")
    retired = await registered(engine, "MRN-MRG-06B", "1958-07-21")
    as_registered = sm.SamplePatient(
        mrn="MRN-MRG-06B", family="Mergeton", given="Clara", birth_date="19580721"
    )
    order = sm.SampleOrder("MRG-06-LAB", patient=as_registered)
    lab = engine.lab_workflow_id(order.placer_order_number)
    await send(engine, sm.lab_order(order, "MRG-06-O"))
    await engine.wait_for_status(lab, "ordered")

    await send(engine, a40("MRG-06-1", "MRN-MRG-06A", "MRN-MRG-06B", "19580721"))
    await engine.wait_for_status(merge_id("MRN-MRG-06A"), "merged")

    # The lab learnt of the merge too: its result names the surviving number. The order's
    # exchange was told, so this is its own patient's result, not a wrong-patient review.
    after_merge = under_number("MRN-MRG-06A", order)
    await send(engine, sm.lab_result(after_merge, "MRG-06-R", [sm.SODIUM]))
    await engine.wait_for_status(lab, "final")
    [report] = await engine.fhir.search(
        "DiagnosticReport", {"patient": f"Patient/{survivor['id']}"}
    )
    assert report["status"] == "final"
    [request] = await engine.fhir.search("ServiceRequest", {"patient": f"Patient/{survivor['id']}"})
    assert request["identifier"][0]["value"] == "MRG-06-LAB"
    assert [based["identifier"]["value"] for based in report["basedOn"]] == ["MRG-06-LAB"]
    assert not await engine.fhir.search("DiagnosticReport", {"patient": f"Patient/{retired['id']}"})


def under_number(mrn: str, order: sm.SampleOrder) -> sm.SampleOrder:
    """The same order as the lab knows it after the merge: under the surviving number."""
    return sm.SampleOrder(
        order.placer_order_number,
        patient=sm.SamplePatient(
            mrn=mrn,
            family=order.patient.family,
            given=order.patient.given,
            birth_date=order.patient.birth_date,
        ),
    )


async def test_a_reviewer_undoes_a_merge_through_the_api(engine: Engine) -> None:
    retired = await registered(engine, "MRN-MRG-07B", "1958-07-21")
    await registered(engine, "MRN-MRG-07A", "1958-07-21")
    await send(engine, a40("MRG-07-1", "MRN-MRG-07A", "MRN-MRG-07B", "19580721"))
    wid = merge_id("MRN-MRG-07A")
    await engine.wait_for_status(wid, "merged")
    undo = f"/exchanges/{wid}/merges/undo"
    body = {"reason": "registration merged two people", "control_id": "MRG-07-1"}
    async with running_api(engine) as api, httpx.AsyncClient(base_url=api.base_url) as http:
        # Operators look; only reviewers undo. Who undid it comes from the token.
        ops = {"Authorization": f"Bearer {api.token('ops-ana', Role.OPS)}"}
        answer = await http.post(undo, json=body, headers=ops)
        assert answer.status_code == 403
        reviewer = {"Authorization": f"Bearer {api.token('rev-merge', Role.REVIEWER)}"}
        for bad in ({"reason": ""}, {**body, "actor": "someone-else"}):
            answer = await http.post(undo, json=bad, headers=reviewer)
            assert answer.status_code == 422, answer.text
            assert answer.json()["resourceType"] == "OperationOutcome"
        answer = await http.post(
            undo, json={**body, "control_id": "MRG-07-9"}, headers=reviewer, timeout=60
        )
        assert answer.status_code == 409
        assert (await engine.fhir.read("Patient", retired["id"])).get("active") is False
        answer = await http.post(
            f"/exchanges/{merge_id('MRN-MRG-07Z')}/merges/undo", json=body, headers=reviewer
        )
        assert answer.status_code == 404, answer.text
        assert answer.json()["resourceType"] == "OperationOutcome"

        answer = await http.post(undo, json=body, headers=reviewer, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["patients_restored"] is True
        restored = await engine.fhir.read("Patient", retired["id"])
        assert "link" not in restored and "active" not in restored
        message_key = hashlib.sha256(b"MRG-07-1").hexdigest()[:16]
        unmerge = await engine.handle(unmerge_workflow_id(wid, message_key, 0)).describe()
        assert unmerge.status is not None and unmerge.status.name == "COMPLETED"
        rows = [(e.actor, e.outcome.value) for e in api.audit if e.exchange == wid]
        assert rows == [
            ("ops-ana", "refused"),
            ("rev-merge", "refused"),
            ("rev-merge", "success"),
        ]
