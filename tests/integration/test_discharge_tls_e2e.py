"""Outbound MLLP over mutual TLS, end to end: gateway -> Temporal -> worker ->
deliver_to_mllp -> the Node partner (@medplum/hl7 behind Node's `tls` server) that
requires a client certificate from the test CA. The routing file's `tls` table decides the
certificates; a destination without a client certificate is retried, then reviewed, with
the TLS failure in the reviewer's summary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from exchanges.sdk import pseudonym
from tests.support.certs import Pki
from tests.support.discharge import received
from tests.support.engine import Engine, mllp_send, running_engine
from tests.support.partner import Partner, running_partner
from workers import sample_messages as sm

ROUTING = """
version = "tls-1"

[[destination]]
name = "secure-billing"
kind = "mllp"
subscribes = ["A03"]
[destination.mllp]
host = "127.0.0.1"
port = {port}
receiving_application = "BILLING"
receiving_facility = "GENHOSP-FIN"
ack_timeout_seconds = 3
[destination.mllp.tls]
ca_file = "ca.pem"
cert_file = "{client_cert}"
key_file = "{client_key}"
[destination.policy]
max_attempts = 3
first_retry_seconds = 0.2
max_retry_seconds = 1

[[destination]]
name = "billing-no-cert"
kind = "mllp"
subscribes = ["A03"]
[destination.mllp]
host = "127.0.0.1"
port = {port}
receiving_application = "BILLING"
receiving_facility = "GENHOSP-FIN"
ack_timeout_seconds = 3
[destination.mllp.tls]
ca_file = "ca.pem"
[destination.policy]
max_attempts = 2
first_retry_seconds = 0.2
max_retry_seconds = 0.5
"""


@pytest.fixture(scope="module")
def mtls_billing(pki: Pki) -> Iterator[Partner]:
    with running_partner(
        "secure-billing",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_cert,
    ) as partner:
        yield partner


@pytest.fixture(scope="module")
async def tls_engine(
    temporal_client: Client,
    fhir_base_url: str,
    mtls_billing: Partner,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    folder = tmp_path_factory.mktemp("tls-routing")
    # ca_file is relative: read beside the routing file.
    (folder / "ca.pem").write_bytes(pki.ca_cert.read_bytes())
    routing = folder / "destinations.toml"
    routing.write_text(
        ROUTING.format(
            port=mtls_billing.mllp_port, client_cert=pki.client_cert, client_key=pki.client_key
        )
    )
    async with running_engine(
        temporal_client,
        fhir_base_url,
        task_queue="careweave-test-tls",
        destinations_file=Path(routing),
        pseudonym_key="test-tls-key",
    ) as engine:
        yield engine


async def test_discharge_delivered_over_mutual_tls_and_refused_without_a_certificate(
    tls_engine: Engine, mtls_billing: Partner
) -> None:
    stay = sm.SampleStay("V-TLS-1", patient=sm.SamplePatient(mrn="MRN-TLS-1"))
    acks = await mllp_send(tls_engine.mllp_port, [sm.adt_event(stay, "DS-TLS-1", "A03")])
    assert "MSA|AA" in acks[0]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    messages: list[dict[str, Any]] = []
    while loop.time() < deadline and not messages:
        messages = await received(mtls_billing, "V-TLS-1")
        await asyncio.sleep(0.2)
    assert [m["answered"] for m in messages] == ["AA"]
    assert "|CAREWEAVE|" in messages[0]["text"].split("\r")[0]

    patient_key = pseudonym(b"test-tls-key", "patient", sm.HOSPITAL, "MRN-TLS-1")
    pending = await tls_engine.wait_for_review(
        f"ordered-delivery/billing-no-cert/{patient_key}", timeout=40
    )
    assert pending["reason"] == "delivery-failed"
    assert "after 2 attempt(s)" in pending["summary"]
    assert "TLS" in pending["summary"], pending["summary"]
    # Only the delivery with the client certificate reached the partner.
    assert len(await received(mtls_billing, "V-TLS-1")) == 1
