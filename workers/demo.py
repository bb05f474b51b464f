"""`careweave demo`: the embedded stack, a sample feed through the gateway, what became of it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace

import httpx
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient
from exchanges.order_to_result import lab_workflow_id
from exchanges.sdk import pseudonym
from models.settings import Settings
from workers import sample_messages as sm
from workers.cli.common import stop_requested
from workers.demo_downtime import show_downtime
from workers.demo_imaging import demo_imaging_settings, imaging_unavailable, run_imaging_demo
from workers.stack import RunningStack, StackError, embedded_stack


@dataclass(frozen=True)
class FeedItem:
    description: str
    payload: bytes
    workflow_id: str | None
    expected_status: str | None
    # Sent once the items before it settled: a merge needs the records it merges to exist.
    after_settle: bool = False


def demo_feed(run_tag: str, pseudonym_key: bytes) -> list[FeedItem]:
    """Orders and results covering the exchange's paths; ids carry run_tag so reruns are new."""
    routine = sm.SampleOrder(f"DEMO{run_tag}A")
    stat = sm.SampleOrder(f"DEMO{run_tag}B", local_code="K", text="Potassium", priority="S")
    late_order = sm.SampleOrder(f"DEMO{run_tag}C", local_code="GLU", text="Glucose")
    unmapped = sm.SampleOrder(f"DEMO{run_tag}D", local_code="ZZX9", text="Experimental")

    def wid(order: sm.SampleOrder) -> str:
        return lab_workflow_id(sm.HOSPITAL, order.placer_order_number, pseudonym_key)

    def item(text: str, message: str, order: sm.SampleOrder | None, status: str | None) -> FeedItem:
        return FeedItem(text, message.encode(), wid(order) if order else None, status)

    first_result = sm.lab_result(routine, f"{run_tag}-02", [sm.SODIUM, sm.POTASSIUM])
    corrected_potassium = sm.ResultValue("K", "Potassium", "4.4", "mmol/L", "3.5-5.1", "N")
    return [
        item("routine order (ORM^O01 NW)", sm.lab_order(routine, f"{run_tag}-01"), routine, None),
        item("its final result", first_result, routine, None),
        item("stat order", sm.lab_order(stat, f"{run_tag}-03"), stat, None),
        item(
            "critical potassium (HH) -> stat Task",
            sm.lab_result(stat, f"{run_tag}-04", [sm.POTASSIUM_CRITICAL]),
            stat,
            "final",
        ),
        item(
            "result that arrives before its order",
            sm.lab_result(late_order, f"{run_tag}-05", [sm.GLUCOSE_HIGH]),
            late_order,
            None,
        ),
        item(
            "...and then its order", sm.lab_order(late_order, f"{run_tag}-06"), late_order, "final"
        ),
        item(
            "corrected result (OBR-25 = C)",
            sm.lab_result(
                routine, f"{run_tag}-07", [sm.SODIUM, corrected_potassium], result_status="C"
            ),
            routine,
            "corrected",
        ),
        item("resend of the first result (same MSH-10)", first_result, routine, "corrected"),
        item(
            "order for a local test code", sm.lab_order(unmapped, f"{run_tag}-08"), unmapped, None
        ),
        item(
            "result with a code that has no LOINC mapping -> review",
            sm.lab_result(unmapped, f"{run_tag}-09", [sm.UNMAPPED]),
            unmapped,
            "ordered",
        ),
        *discharge_feed(run_tag, pseudonym_key),
        *patient_feed(run_tag, pseudonym_key),
        *merge_feed(run_tag, pseudonym_key),
        FeedItem("not HL7 at all -> AR, quarantined", b"hello, this is not HL7\r", None, None),
        FeedItem(
            "ADT^A01 (admission: no exchange takes it) -> AR 201",
            (
                f"MSH|^~\\&|ADT|{sm.HOSPITAL}|X|Y|20261125||ADT^A01|{run_tag}-10|P|2.5.1\r"
                "PID|1||X\r"
            ).encode(),
            None,
            None,
        ),
    ]


def discharge_feed(run_tag: str, pseudonym_key: bytes) -> list[FeedItem]:
    """A discharge, then an amended diagnosis: to FHIR and both partners, in order."""
    patient = sm.SamplePatient(mrn=f"MRN{run_tag}", family="Demopatient", given="Rosa")
    stay = sm.SampleStay(f"V{run_tag}", patient=patient)
    amended = sm.SampleStay(
        f"V{run_tag}",
        patient=patient,
        diagnoses=(
            *stay.diagnoses[:1],
            sm.SampleDiagnosis("2", "E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
        ),
    )
    key = pseudonym(pseudonym_key, "encounter", sm.HOSPITAL, stay.visit_number)
    workflow_id = f"discharge-sync/{sm.HOSPITAL}/{key}"
    return [
        FeedItem(
            "discharge (ADT^A03) -> FHIR Encounter + Conditions, primary care, billing",
            sm.adt_event(stay, f"{run_tag}-11", "A03").encode(),
            workflow_id,
            None,
        ),
        FeedItem(
            "amended diagnosis (ADT^A08) -> FHIR and billing, after the A03",
            sm.adt_event(amended, f"{run_tag}-12", "A08").encode(),
            workflow_id,
            "diagnoses-updated",
        ),
    ]


def patient_feed(run_tag: str, pseudonym_key: bytes) -> list[FeedItem]:
    """Registration adds a person, then moves them: the Patient created, then merged."""
    patient = sm.SamplePatient(mrn=f"MRNP{run_tag}", family="Demoperson", given="Iris")
    key = pseudonym(pseudonym_key, "patient", sm.HOSPITAL, patient.mrn)
    workflow_id = f"patient-sync/{sm.HOSPITAL}/{key}"
    return [
        FeedItem(
            "new person (ADT^A28) -> FHIR Patient created",
            sm.person_update(patient, f"{run_tag}-13", "A28").encode(),
            workflow_id,
            None,
        ),
        FeedItem(
            "new address (ADT^A31) -> merged into the Patient, nothing else erased",
            sm.person_update(
                patient, f"{run_tag}-14", "A31", address="9 Oak Ave^^Springfield^IL^62702^USA^H"
            ).encode(),
            workflow_id,
            "updated",
        ),
    ]


def merge_feed(run_tag: str, pseudonym_key: bytes) -> list[FeedItem]:
    """Registration finds two duplicates: one merge goes through (the same person twice),
    one waits for a reviewer (the birth dates differ)."""
    kept = sm.SamplePatient(mrn=f"MRNM{run_tag}A", family="Demomerge", given="Lena")
    duplicate = replace(kept, mrn=f"MRNM{run_tag}B")
    other_kept = sm.SamplePatient(
        mrn=f"MRNM{run_tag}C", family="Demomerge", given="Otto", birth_date="19480101", sex="M"
    )
    other = replace(other_kept, mrn=f"MRNM{run_tag}D", birth_date="19751120")

    def exchange_id(exchange: str, patient: sm.SamplePatient) -> str:
        key = pseudonym(pseudonym_key, "patient", sm.HOSPITAL, patient.mrn)
        return f"{exchange}/{sm.HOSPITAL}/{key}"

    registrations = [
        FeedItem(
            "registration of a patient (ADT^A28) -> FHIR Patient",
            sm.person_update(patient, f"{run_tag}-{number}", "A28").encode(),
            exchange_id("patient-sync", patient),
            "created",
        )
        for number, patient in enumerate((kept, duplicate, other_kept, other), start=15)
    ]
    return [
        *registrations,
        FeedItem(
            "merge of a duplicate record (ADT^A40) -> merged: Patients linked, nothing deleted",
            sm.patient_merge(kept, duplicate, f"{run_tag}-19").encode(),
            exchange_id("patient-merge", kept),
            "merged",
            after_settle=True,
        ),
        FeedItem(
            "merge of records whose birth dates differ (ADT^A40) -> waits for a reviewer",
            sm.patient_merge(other_kept, other, f"{run_tag}-20").encode(),
            exchange_id("patient-merge", other_kept),
            "awaiting-review",
            after_settle=True,
        ),
    ]


async def _partner_table(stack: RunningStack, run_tag: str) -> Table:
    table = Table(title="What the partner systems received (over MLLP, from Careweave)")
    for column in ("partner", "message", "MSH-10 (Careweave's)", "answered"):
        table.add_column(column, no_wrap=True)
    async with httpx.AsyncClient(timeout=5) as http:
        for partner in stack.partners:
            for _ in range(50):
                records = (await http.get(f"{partner.control_url}/messages")).json()
                mine = [r for r in records if f"V{run_tag}^" in r["text"]]
                if len(mine) >= (2 if partner.name == "billing" else 1):
                    break
                await asyncio.sleep(0.2)
            for record in mine:
                table.add_row(
                    partner.name, record["message_type"], record["control_id"], record["answered"]
                )
    return table


async def _status(client: Client, workflow_id: str) -> str:
    handle = client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    if description.status != WorkflowExecutionStatus.RUNNING:
        return description.status.name.lower() if description.status else "unknown"
    status: str = await handle.query("status")
    pending = await handle.query("pending_review")
    return f"{status} (review pending)" if pending else status


async def _wait_for(client: Client, items: list[FeedItem], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for item in items:
        if not (item.workflow_id and item.expected_status):
            continue
        while time.monotonic() < deadline:
            if (await _status(client, item.workflow_id)).startswith(item.expected_status):
                break
            await asyncio.sleep(0.3)


async def _run(stack: RunningStack, console: Console, run_tag: str) -> None:
    feed = demo_feed(run_tag, stack.settings.resolved_pseudonym_key())
    answers: dict[int, tuple[str, str]] = {}
    first = [(i, item) for i, item in enumerate(feed) if not item.after_settle]
    later = [(i, item) for i, item in enumerate(feed) if item.after_settle]
    async with MllpClient("127.0.0.1", stack.gateway.port, timeout=30) as mllp:
        for batch in (first, later):
            for index, item in batch:
                code, _control_id, error = parse_ack(await mllp.send(item.payload))
                answers[index] = (code, error)
            with console.status("waiting for the exchanges to settle..."):
                await _wait_for(stack.client, [item for _, item in batch], 60)
    acks = [answers[index] for index in range(len(feed))]
    table = Table(title="What happened to each message")
    table.add_column("#")
    table.add_column("message", min_width=24)
    table.add_column("ACK", no_wrap=True)
    table.add_column("exchange (workflow id)", no_wrap=True)
    table.add_column("status now", min_width=10)
    for index, (item, (code, error)) in enumerate(zip(feed, acks, strict=True), start=1):
        status = await _status(stack.client, item.workflow_id) if item.workflow_id else "-"
        ack = f"{code} {error}".strip()
        table.add_row(str(index), item.description, ack, item.workflow_id or "quarantined", status)
    console.print(table)
    if stack.partners:
        console.print(await _partner_table(stack, run_tag))
        await show_downtime(stack, console, run_tag)
    unavailable = imaging_unavailable(stack.settings)
    if unavailable:
        console.print(f"Imaging order to result not shown: {unavailable}")
    else:
        with console.status("imaging: order, worklist, images, ImagingStudy, report..."):
            imaging = await run_imaging_demo(stack, run_tag)
        console.print(imaging)
    console.print(f"Temporal UI: {stack.ui_url}")
    console.print(f"FHIR server: {stack.settings.fhir_base_url}/DiagnosticReport")
    console.print(
        "Quarantine: careweave quarantine list    Reviews: careweave users add NAME --role "
        "reviewer, careweave login, careweave review list"
    )


def run_demo(settings: Settings, console: Console, *, keep_running: bool) -> None:
    run_tag = time.strftime("%H%M%S")
    settings = demo_imaging_settings(settings)

    async def main() -> None:
        # SIGTERM as well as Ctrl-C: a supervisor's stop must reach the finally below, which
        # stops the children (each in its own process group, so no signal reaches them).
        stop = stop_requested()
        with console.status("starting Temporal, the FHIR server, the worker and the gateway..."):
            context = embedded_stack(settings)
            stack = await context.__aenter__()
        try:
            fed = await _unless_stopped(_run(stack, console, run_tag), stop)
            if fed and keep_running:
                console.print("The stack keeps running; press Ctrl-C to stop it.")
                await stop.wait()
        finally:
            await context.__aexit__(None, None, None)
        console.print("Stopped.")

    try:
        asyncio.run(main())
    except StackError as err:
        console.print(f"[red]error:[/red] {err}")
        raise SystemExit(1) from err


async def _unless_stopped(work: Coroutine[object, object, None], stop: asyncio.Event) -> bool:
    """Run ``work`` to its end, or cancel it when a stop comes first; True if it ended."""
    working = asyncio.create_task(work)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not working.done():
        working.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await working
        return False
    working.result()
    return True
