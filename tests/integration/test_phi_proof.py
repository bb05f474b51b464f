"""The proof the issue asks for: run the demo feed as an operator would (`careweave demo`,
its own processes, a file-backed Temporal dev server), then search Temporal's SQLite
files, Careweave's database and Careweave's own log output for every patient name, MRN
and birth date in the feed. None may appear.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from temporalio.api.failure.v1 import Failure

from adapters.payload_crypto import parse_key_ring
from tests.support.engine import start_temporal
from tests.support.fhir_server import free_port
from tests.support.history import nested
from tests.support.processes import demo_routing, free_port_pair
from workers import sample_messages as sm
from workers.demo import demo_feed
from workers.demo_downtime import downtime_feed
from workers.temporal_client import connect_to

pytestmark = pytest.mark.integration


def _phi_of_the_feed() -> set[bytes]:
    """Names, MRNs and birth dates from PID-3, PID-5 and PID-7 of every message in the feed."""
    found: set[bytes] = set()
    payloads = [item.payload for item in demo_feed("000000", b"k" * 32)]
    payloads += [message.encode() for message in downtime_feed("000000")]
    for payload in payloads:
        for segment in payload.split(b"\r"):
            fields = segment.split(b"|")
            if fields[0] != b"PID" or len(fields) < 8:
                continue
            found.add(fields[3].split(b"^")[0])  # MRN
            found.update(part for part in fields[5].split(b"^")[:2] if part)  # family, given
            birth_date = fields[7][:8]
            found.add(birth_date)
            found.add(b"-".join((birth_date[:4], birth_date[4:6], birth_date[6:8])))  # FHIR form
    found.discard(b"")
    found.discard(b"X")  # the deliberately broken ADT^A01 has only "X" as PID-3
    return found


async def _operator_view_of_histories(state: Path) -> bytes:
    """Restart a dev server on the demo's SQLite file and collect, decoded with the demo's
    own key ring, every workflow id, search attribute, summary/details and failure message."""
    key_ring = parse_key_ring((state / "payload.keys").read_text(), source="demo")
    environment = await start_temporal(db_filename=state / "temporal.db")
    view: list[str] = []
    try:
        client = await connect_to(environment.client.service_client.config.target_host, key_ring)
        converter = client.data_converter
        async for execution in client.list_workflows():
            view.append(execution.id)
            view += [str(pair.value) for pair in execution.typed_search_attributes]
            history = await client.get_workflow_handle(
                execution.id, run_id=execution.run_id
            ).fetch_history()
            for event in history.events:
                metadata = event.user_metadata
                for field in (metadata.summary, metadata.details):
                    if field.data:
                        [plain] = await converter.payload_codec.decode([field])  # type: ignore[union-attr]
                        view.append(converter.payload_converter.from_payload(plain, str))
                for _, failure in nested(event, Failure):
                    await converter.payload_codec.decode_failure(failure)  # type: ignore[union-attr]
                    while failure.ByteSize():
                        view += [failure.message, failure.stack_trace]
                        if failure.HasField("encoded_attributes"):
                            attributes = converter.payload_converter.from_payload(
                                failure.encoded_attributes, dict
                            )
                            view += [str(value) for value in attributes.values()]
                        failure = failure.cause
        assert len(view) > 50  # the demo's exchanges and deliveries are all there
    finally:
        await environment.shutdown()
    return "\n".join(view).encode()


def test_no_patient_data_in_temporal_careweave_db_or_logs(tmp_path: Path) -> None:
    phi = _phi_of_the_feed()
    patient = sm.SamplePatient()
    assert {patient.family.encode(), patient.given.encode(), patient.mrn.encode()} <= phi
    # The discharge patient's MRN carries the run tag, so match it by shape as well.
    mrn_with_run_tag = re.compile(rb"MRN\d{6}")

    fhir_port, primary_care, billing = free_port(), free_port_pair(), free_port_pair()
    routing = tmp_path / "destinations.toml"
    routing.write_text(demo_routing(fhir_port, primary_care, billing))
    state = tmp_path / "state"
    env = {
        **os.environ,
        "CAREWEAVE_STATE_DIR": str(state),
        "CAREWEAVE_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "CAREWEAVE_TEMPORAL_UI_PORT": str(free_port()),
        "CAREWEAVE_MLLP_PORT": str(free_port()),
        "CAREWEAVE_FHIR_SERVER_PORT": str(fhir_port),
        "CAREWEAVE_FHIR_BASE_URL": f"http://127.0.0.1:{fhir_port}/fhir",
        "CAREWEAVE_DESTINATIONS_FILE": str(routing),
        "CAREWEAVE_TASK_QUEUE": "careweave-phi-proof",
    }
    env.pop("CAREWEAVE_PAYLOAD_KEYS", None)
    demo = subprocess.run(
        [str(Path(sys.executable).parent / "careweave"), "demo", "--no-keep-running", "-v"],
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    logs = demo.stdout + demo.stderr
    assert demo.returncode == 0, logs.decode(errors="replace")[-3000:]
    # The feed really went through: the discharge reached the FHIR server and both partners.
    assert b"discharge (ADT^A03)" in demo.stdout
    # ...and the downtime part: held while billing was down, replayed once it came back.
    assert b"3 event(s) held in 3 patient queue(s)" in demo.stdout
    assert b"replay: 3 of 3 events, 3 of 3 patients (done)" in demo.stdout

    scanned = {
        path.name: path.read_bytes()
        for path in state.iterdir()
        if path.name.startswith(("temporal.db", "careweave.db"))
    }
    assert "temporal.db" in scanned and "careweave.db" in scanned
    # The dev server's own log; the demo FHIR server's and partners' logs stand for other
    # vendors' systems, which receive the patient data by design.
    scanned["logs/temporal.log"] = (state / "logs" / "temporal.log").read_bytes()
    # What an operator reads in the UI once the codec endpoint decodes it: workflow ids,
    # search attributes, event summaries and details, failure messages.
    scanned["decoded histories (ids, search attributes, summaries, failures)"] = asyncio.run(
        _operator_view_of_histories(state)
    )
    assert len(scanned["temporal.db"]) > 100_000  # histories are in there, encrypted
    scanned["careweave output (stdout + stderr, -v)"] = logs

    leaks = [
        f"{term.decode()} in {name}"
        for name, content in scanned.items()
        for term in sorted(phi)
        if term in content
    ]
    leaks += [
        f"{match.decode()} in {name}"
        for name, content in scanned.items()
        for match in mrn_with_run_tag.findall(content)
    ]
    assert leaks == []
    # The quarantined non-HL7 message is in careweave.db, but sealed.
    assert b"hello, this is not HL7" not in scanned["careweave.db"]
