"""The demo's imaging order-to-result: one CT order through the gateway writes the
ServiceRequest and a worklist entry; the modality (dcmtk's findscu and storescu,
workers/modality.py) reads the entry and sends images to the embedded Orthanc; the PACS
poller publishes the ImagingStudy; the radiology report links it. What became of it is a
table of FHIR references and counts (no patient data, no order or accession numbers)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table
from temporalio.client import Client

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.mllp_client import MllpClient
from exchanges.imaging_order import imaging_workflow_id
from models.settings import Settings
from workers import sample_messages as sm
from workers.modality import (
    PacsAddress,
    dcmtk_installed,
    find_worklist,
    scheduled_patient,
    series_files,
    store,
)
from workers.stack import RunningStack
from workers.worker import lab_fhir_client

# The demo's Orthanc calls a study stable after this many quiet seconds (unless configured):
# the production default (60 s) would keep the demo waiting a minute for nothing.
DEMO_STABLE_AGE_SECONDS = 3
DEMO_POLL_SECONDS = 1.0
_LOOPBACK = ("127.0.0.1", "localhost")


def demo_imaging_settings(settings: Settings) -> Settings:
    """``settings`` with a short StableAge and poll for the demo, unless set on purpose."""
    quick: dict[str, Any] = {}
    if "orthanc_stable_age_seconds" not in settings.model_fields_set:
        quick["orthanc_stable_age_seconds"] = DEMO_STABLE_AGE_SECONDS
    if "imaging_poll_seconds" not in settings.model_fields_set:
        quick["imaging_poll_seconds"] = DEMO_POLL_SECONDS
    return settings.model_copy(update=quick)


def imaging_unavailable(settings: Settings) -> str:
    """Why the demo cannot show imaging here, or "" when it can."""
    if not settings.orthanc_embedded:
        return "the demo drives only the embedded Orthanc (orthanc_embedded is off)"
    if not dcmtk_installed():
        return (
            "dcmtk's findscu and storescu are missing: apt-get install dcmtk (`make demo` does it)"
        )
    if _modality_aet(settings) is None:
        return "no modality AE title on 127.0.0.1 in orthanc_modalities"
    return ""


def _modality_aet(settings: Settings) -> str | None:
    return next(
        (aet for aet, host in settings.orthanc_modalities.items() if host in _LOOPBACK), None
    )


async def _status_of(client: Client, workflow_id: str, wanted: str, seconds: float) -> str:
    """The exchange's status once it is ``wanted``, or the last seen when time runs out."""
    deadline = time.monotonic() + seconds
    status = ""
    while time.monotonic() < deadline:
        try:
            status = await client.get_workflow_handle(workflow_id).query("status")
        except Exception:  # not started yet: the gateway's start is on its way
            status = ""
        if status == wanted:
            break
        await asyncio.sleep(0.3)
    return status


async def run_imaging_demo(stack: RunningStack, run_tag: str) -> Table:
    """Order -> worklist -> images -> ImagingStudy -> report, each step a table row."""
    settings = stack.settings
    aet = _modality_aet(settings)
    assert aet is not None
    pacs = PacsAddress("127.0.0.1", settings.orthanc_dicom_port, settings.orthanc_aet, aet)
    order = sm.ct_order(f"DEMO{run_tag}I")
    accession = f"ACC{run_tag}"
    workflow_id = imaging_workflow_id(accession, settings.resolved_pseudonym_key())
    client = stack.client
    table = Table(title="Imaging order to result (Orthanc PACS, dcmtk as the modality)")
    for column in ("step", "what happened"):
        table.add_column(column)

    async with MllpClient("127.0.0.1", stack.gateway.port, timeout=30) as mllp:
        ack = parse_ack(
            await mllp.send(sm.imaging_order_message(order, accession, f"{run_tag}-I1").encode())
        )
    status = await _status_of(client, workflow_id, "scheduled", 30)
    table.add_row("CT order (ORM^O01, OBR-24 CT)", f"{ack[0]}; exchange {workflow_id}: {status}")
    if status != "scheduled":
        return table

    with tempfile.TemporaryDirectory(prefix="careweave-modality-") as folder:
        answers = await asyncio.to_thread(find_worklist, pacs, Path(folder) / "find", accession)
        table.add_row(
            "worklist (findscu, C-FIND)", f"{len(answers)} scheduled step for the accession"
        )
        if len(answers) != 1:
            return table
        [answer] = answers
        common: dict[str, Any] = {
            "patient": scheduled_patient(answer),
            "accession_number": accession,
            "study_instance_uid": str(answer.StudyInstanceUID),
        }
        files = series_files(Path(folder) / "s1", series_number=1, instances=2, **common)
        files += series_files(
            Path(folder) / "s2", series_number=2, instances=1, test_file="MR_small.dcm", **common
        )
        await asyncio.to_thread(store, pacs, files)
    table.add_row("images (storescu, C-STORE)", f"{len(files)} images in 2 series sent to Orthanc")

    status = await _status_of(client, workflow_id, "imaged", 90)
    written: list[str] = await client.get_workflow_handle(workflow_id).query("resources_written")
    study_ref = next((r for r in written if r.startswith("ImagingStudy/")), "")
    if not study_ref:
        table.add_row("ImagingStudy", f"not published (exchange: {status})")
        return table
    async with lab_fhir_client(settings) as fhir:
        study = await fhir.read(*study_ref.split("/"))
        endpoint = await fhir.read(*study["endpoint"][0]["reference"].split("/"))
        based_on = ", ".join(b["reference"] for b in study.get("basedOn", []))
        table.add_row(
            "ImagingStudy (PACS poller, WADO-RS headers)",
            f"{study_ref}: {study['numberOfSeries']} series, {study['numberOfInstances']} "
            f"images, basedOn {based_on}",
        )
        table.add_row("its Endpoint", f"{endpoint['connectionType']['code']} {endpoint['address']}")

        async with MllpClient("127.0.0.1", stack.gateway.port, timeout=30) as mllp:
            report_message = sm.radiology_report_message(order, accession, f"{run_tag}-I2")
            ack = parse_ack(await mllp.send(report_message.encode()))
        status = await _status_of(client, workflow_id, "completed", 60)
        written = await client.get_workflow_handle(workflow_id).query("resources_written")
        report_ref = next((r for r in written if r.startswith("DiagnosticReport/")), "")
        linked = ""
        if report_ref:
            report = await fhir.read(*report_ref.split("/"))
            linked = ", ".join(i["reference"] for i in report.get("imagingStudy", []))
        table.add_row(
            "radiology report (ORU^R01)",
            f"{ack[0]}; {report_ref or 'no report'} -> imagingStudy {linked or '-'}; "
            f"exchange {status}",
        )
    return table
