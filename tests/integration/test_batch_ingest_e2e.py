"""Upstream downtime batches end to end: `careweave ingest-batch` as a separate process ->
the same intake as the MLLP gateway -> Temporal -> the worker -> the project's FHIR
server. Patient-sync (ADT^A31) messages, patients MRN 91xx (unique in the session).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from models.records import BatchStatus
from tests.support.cli import CAREWEAVE, careweave, careweave_environment
from tests.support.engine import Engine, mllp_send, running_engine
from tests.support.patient_sync import (
    PSEUDONYM_KEY,
    Person,
    patient_sync_id,
    person_message,
    wait_applied,
    wait_patient,
)

# Open long enough that one patient's messages of a run (and of its resumption) land in
# one run of its exchange, whose `applied_messages` then tells their order.
CLOSE_AFTER_SECONDS = 60.0
CLI_ENV = {"CAREWEAVE_PSEUDONYM_KEY": PSEUDONYM_KEY}


@pytest.fixture(scope="module")
async def engine(temporal_client: Client, fhir_base_url: str) -> AsyncIterator[Engine]:
    async with running_engine(
        temporal_client,
        fhir_base_url,
        pseudonym_key=PSEUDONYM_KEY,
        patient_sync_close_after_seconds=CLOSE_AFTER_SECONDS,
        task_queue="careweave-batch-ingest-e2e",
    ) as running:
        yield running


def a31(mrn: str, control_id: str, sent_at: str, street: str) -> str:
    person = Person(mrn, address=f"{street}^^Springfield^IL^62701^USA^H")
    return person_message(person, control_id).replace("20261201101500", sent_at)


def batch_file(*messages: str, bts_count: int | None = None) -> bytes:
    count = len(messages) if bts_count is None else bts_count
    lines = [
        "FHS|^~\\&|REGSYS|GENHOSP|CAREWEAVE|GENHOSP|20261202080000",
        "BHS|^~\\&|REGSYS|GENHOSP",
    ]
    for message in messages:
        lines += message.rstrip("\r").split("\r")
    lines += [f"BTS|{count}", "FTS|1"]
    # Written by a Windows EHR: CRLF line ends.
    return ("\r\n".join(lines) + "\r\n").encode()


def summary_row(output: str, message_type: str) -> list[int]:
    """accepted, duplicate, already applied, quarantined, already quarantined."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] == message_type:
            return [int(c) for c in cells[2:7]]
    raise AssertionError(f"no summary row for {message_type}:\n{output}")


async def test_batch_held_then_accepted_applies_in_clinical_order_exactly_once(
    engine: Engine, temporal_client: Client, tmp_path: Path
) -> None:
    # A message that reached Careweave live before the EHR's batch.
    live = a31("MRN9102", "BT-LIVE-1", "20261202070000+0000", "5 Live Rd")
    [ack] = await mllp_send(engine.mllp_port, [live])
    assert "MSA|AA" in ack
    await wait_applied(engine.handle(patient_sync_id("MRN9102")), 1)

    truncated = a31("MRN9103", "BT-TRUNC", "20261202090000+0000", "9 Cut Rd")
    truncated = truncated[: truncated.index("PID|") + len("PID|1|")]  # PID ends before PID-3
    messages = [
        a31("MRN9101", "BT-3", "20261202120000+0000", "3 Late St"),  # 12:00 UTC
        a31("MRN9101", "BT-1", "20261202100000+0000", "1 Early St"),  # 10:00 UTC
        truncated,
        a31("MRN9101", "BT-2", "20261202113000+0100", "2 Middle St"),  # 10:30 UTC
        live,  # the live message again
    ]
    path = tmp_path / "downtime-ward7.hl7"
    path.write_bytes(batch_file(*messages, bts_count=6))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    quarantined_before = len(engine.store.quarantined(None, limit=10_000))

    # The trailer says 6 messages, the batch holds 5: held, nothing applied.
    code, output = await careweave(engine, temporal_client, "ingest-batch", str(path), env=CLI_ENV)
    assert code == 3, output
    assert "trailer BTS: BTS-1 says 6 message(s), the batch opened at line 2 holds 5" in output
    assert f"{path}:11 ADT^A31" in output and "message looks truncated" in output
    assert "--accept-trailer-mismatch" in output
    ledger = engine.store.batch_ledger().get(digest)
    assert ledger is not None and ledger.status == BatchStatus.HELD.value and ledger.applied == 0
    assert len(engine.store.quarantined(None, limit=10_000)) == quarantined_before
    assert engine.store.receipt("GENHOSP", "BT-1") is None

    code, output = await careweave(
        engine,
        temporal_client,
        "ingest-batch",
        str(path),
        "--accept-trailer-mismatch",
        "--rate",
        "50/s",
        "--by",
        "ops-batch",
        env=CLI_ENV,
    )
    assert code == 1, output  # a message went to quarantine
    assert summary_row(output, "ADT^A31") == [3, 1, 0, 1, 0]

    # Applied in clinical order (MSH-7 with its offset), not in file order.
    applied = await wait_applied(engine.handle(patient_sync_id("MRN9101")), 3)
    assert [m["control_id"] for m in applied] == ["BT-1", "BT-2", "BT-3"]
    patient = await wait_patient(
        engine.fhir, "MRN9101", lambda p: p["address"][0]["line"] == ["3 Late St"]
    )
    assert patient["address"][0]["line"] == ["3 Late St"]
    # The duplicate of the live message was not applied again.
    live_applied = await engine.handle(patient_sync_id("MRN9102")).query("applied_messages")
    assert [m["control_id"] for m in live_applied] == ["BT-LIVE-1"]

    # The truncated message is in quarantine with its file and line, and the gateway's reason.
    [kept] = [
        row
        for row in engine.store.quarantined(None, limit=10_000)
        if row.peer.startswith("batch downtime-ward7.hl7:")
    ]
    assert kept.peer == "batch downtime-ward7.hl7:11"
    assert kept.control_id == "BT-TRUNC"
    assert "message looks truncated" in kept.reason
    assert kept.raw.startswith(b"MSH|") and b"\n" not in kept.raw
    ledger = engine.store.batch_ledger().get(digest)
    assert ledger is not None
    assert (ledger.status, ledger.applied, ledger.steps) == (BatchStatus.DONE.value, 5, 5)
    assert ledger.trailer_mismatch_accepted_by == "ops-batch"
    acceptance = [
        r for r in engine.store.audit_log().records() if r.resource == f"BatchFile/{digest[:32]}"
    ]
    assert [(r.action, r.actor) for r in acceptance] == [("release", "ops-batch")]

    # Run again: nothing is applied or quarantined twice.
    code, output = await careweave(engine, temporal_client, "ingest-batch", str(path), env=CLI_ENV)
    assert code == 0, output
    assert summary_row(output, "ADT^A31") == [0, 0, 4, 0, 1]
    assert len(engine.store.quarantined(None, limit=10_000)) == quarantined_before + 1
    applied = await engine.handle(patient_sync_id("MRN9101")).query("applied_messages")
    assert [m["control_id"] for m in applied] == ["BT-1", "BT-2", "BT-3"]


async def test_batch_stopped_in_the_middle_resumes_without_applying_twice(
    engine: Engine, temporal_client: Client, tmp_path: Path
) -> None:
    messages = [
        a31("MRN9111", f"BT-K-{n}", f"2026120210{n:02d}00+0000", f"{n} Step St")
        for n in range(1, 9)
    ]
    path = tmp_path / "downtime-ward9.hl7"
    path.write_bytes(batch_file(*reversed(messages)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ledger = engine.store.batch_ledger()

    process = await asyncio.create_subprocess_exec(
        str(CAREWEAVE),
        "ingest-batch",
        str(path),
        "--rate",
        "2/s",
        env=careweave_environment(engine, temporal_client, CLI_ENV),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while True:
            row = ledger.get(digest)
            if row is not None and row.applied >= 2:
                break
            assert process.returncode is None, "finished before it could be stopped"
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    row = ledger.get(digest)
    assert row is not None and row.status == BatchStatus.APPLYING.value
    stopped_at = row.applied
    assert 2 <= stopped_at < 8

    code, output = await careweave(
        engine, temporal_client, "ingest-batch", str(path), "--rate", "50/s", env=CLI_ENV
    )
    assert code == 0, output
    accepted, duplicate, already, _, _ = summary_row(output, "ADT^A31")
    # The message in flight when it was killed may have been committed and not recorded:
    # the receipts call it already applied, never a second application.
    assert already >= stopped_at and accepted + already == 8 and duplicate == 0
    applied = await wait_applied(engine.handle(patient_sync_id("MRN9111")), 8)
    assert [m["control_id"] for m in applied] == [f"BT-K-{n}" for n in range(1, 9)]
    row = ledger.get(digest)
    assert row is not None and (row.status, row.applied) == (BatchStatus.DONE.value, 8)


async def test_watched_inbox_moves_files_aside(
    engine: Engine, temporal_client: Client, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = batch_file(a31("MRN9121", "BT-W-1", "20261202100000+0000", "1 Inbox St"))
    short = batch_file(a31("MRN9122", "BT-W-2", "20261202100000+0000", "2 Inbox St"), bts_count=2)
    process = await asyncio.create_subprocess_exec(
        str(CAREWEAVE),
        "ingest-batch",
        "--watch",
        str(inbox),
        env=careweave_environment(
            engine,
            temporal_client,
            {
                **CLI_ENV,
                "CAREWEAVE_BATCH_INBOX_POLL_SECONDS": "0.2",
                "CAREWEAVE_BATCH_INBOX_SETTLE_SECONDS": "0.5",
            },
        ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        (inbox / "good.hl7").write_bytes(good)
        (inbox / "short.hl7").write_bytes(short)
        for _ in range(600):
            if (inbox / "processed" / "good.hl7").exists() and (
                inbox / "held" / "short.hl7"
            ).exists():
                break
            assert process.returncode is None
            await asyncio.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
    assert (inbox / "processed" / "good.hl7").read_bytes() == good
    assert (inbox / "held" / "short.hl7").read_bytes() == short
    assert sorted(p.name for p in inbox.iterdir()) == ["held", "processed"]
    applied = await wait_applied(engine.handle(patient_sync_id("MRN9121")), 1)
    assert [m["control_id"] for m in applied] == ["BT-W-1"]
    assert engine.store.receipt("GENHOSP", "BT-W-2") is None
