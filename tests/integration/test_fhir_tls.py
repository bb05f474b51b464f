"""FHIR over HTTPS with a private CA, against the project's FHIR server behind node:https
(certificates from tests/support/certs.py, made for this session): the adapter trusts the
server only with the test CA configured; a server that requires client certificates refuses
a client without one, token endpoint included, and serves one with it. End to end, the
lab-result client (CAREWEAVE_FHIR_TLS_*) and a discharge destination with a routing `tls`
table deliver over HTTPS; a destination that does not trust the CA goes to review with the
certificate failure in its summary.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from adapters.fhir import FhirClient, FhirRetryableError, FhirTlsError, auth_from_config
from adapters.tls import client_tls_context
from exchanges.sdk import pseudonym
from tests.support.certs import Pki
from tests.support.engine import mllp_send, running_engine, wait_for_finished_encounter
from tests.support.fhir_server import running_fhir_server, token_url
from tests.support.smart_client import SmartClientKeys, make_client_keys
from workers import sample_messages as sm

SYSTEM = "urn:careweave:test-tls"


@pytest.fixture(scope="module")
def https_server(pki: Pki) -> Iterator[str]:
    with running_fhir_server(tls=pki) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def smart_keys(tmp_path_factory: pytest.TempPathFactory) -> SmartClientKeys:
    return make_client_keys(tmp_path_factory.mktemp("smart-tls"), "careweave-tls", "ES384")


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, smart_keys: SmartClientKeys) -> Iterator[str]:
    """Client certificates required, and SMART authorization on: the token endpoint is
    behind the same mutual TLS as the FHIR API."""
    with running_fhir_server(
        tls=pki,
        require_client_cert=True,
        smart_clients={smart_keys.client_id: smart_keys.jwks_file},
    ) as base_url:
        yield base_url


def mtls_client(base_url: str, pki: Pki, keys: SmartClientKeys) -> FhirClient:
    """A client with the test CA, the client certificate and SMART credentials, one context
    for the FHIR server and its token endpoint."""
    tls = client_tls_context(
        ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
    )
    smart = auth_from_config(keys.config(token_url(base_url)), where="test", tls=tls)
    return FhirClient(base_url, tls=tls, auth=smart)


def patient(value: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": value}],
        "active": True,
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_conditional_create_over_https_with_the_private_ca(
    https_server: str, pki: Pki
) -> None:
    assert https_server.startswith("https://")
    value = unique("tls")
    query = f"identifier={SYSTEM}|{value}"
    async with FhirClient(https_server, tls=client_tls_context(ca_file=pki.ca_cert)) as fhir:
        first = await fhir.conditional_create(patient(value), query)
        second = await fhir.conditional_create(patient(value), query)
        found = await fhir.search("Patient", {"identifier": f"{SYSTEM}|{value}"})
    assert first["id"] == second["id"]
    assert [resource["id"] for resource in found] == [first["id"]]


async def test_server_not_trusted_is_a_certificate_verification_error(
    https_server: str, pki: Pki
) -> None:
    # Without a CA (the system's, which do not hold the test CA) and with the wrong private
    # CA: the handshake fails before anything is sent, retryable like a refused connection.
    for tls in (None, client_tls_context(ca_file=pki.other_ca_cert)):
        async with FhirClient(https_server, tls=tls) as fhir:
            with pytest.raises(FhirTlsError) as caught:
                await fhir.conditional_create(patient(unique("untrusted")), "identifier=x|y")
        assert "conditional_create: TLS: certificate verification failed" in str(caught.value)


async def test_without_a_tls_setting_the_system_trust_store_decides(
    https_server: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The documented route to a private CA without a tls table: SSL_CERT_FILE names the
    # trust store. (That the default is the system store and not certifi's list shows only
    # with a CA installed system-wide, which a test should not do to the machine.)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
    value = unique("system-store")
    async with FhirClient(https_server) as fhir:
        created = await fhir.conditional_create(patient(value), f"identifier={SYSTEM}|{value}")
    assert created["identifier"][0]["value"] == value


async def test_mutual_tls_refuses_a_client_without_a_certificate_and_serves_one_with_it(
    mtls_server: str, pki: Pki, smart_keys: SmartClientKeys
) -> None:
    # Under TLS 1.3 the server refuses after the handshake: our client reads its alert, or,
    # when the server has already closed, fails to write the request; both name the cause.
    refused = r"TLS failed: TLSV13_ALERT_CERTIFICATE_REQUIRED|requires a client certificate"
    trust_only = client_tls_context(ca_file=pki.ca_cert)
    async with FhirClient(mtls_server, tls=trust_only) as fhir:
        with pytest.raises(FhirRetryableError, match=rf"^capability: .*({refused})"):
            await fhir.capability()
    # SMART's token endpoint is reached with the FHIR client's context: without a client
    # certificate the token request is refused too.
    smart = auth_from_config(smart_keys.config(token_url(mtls_server)), where="t", tls=trust_only)
    async with FhirClient(mtls_server, tls=trust_only, auth=smart) as fhir:
        with pytest.raises(FhirRetryableError, match=rf"^token endpoint: .*({refused})"):
            await fhir.conditional_create(patient(unique("no-cert")), "identifier=x|y")

    value = unique("mtls")
    async with mtls_client(mtls_server, pki, smart_keys) as fhir:
        created = await fhir.conditional_create(patient(value), f"identifier={SYSTEM}|{value}")
        assert (await fhir.read("Patient", created["id"]))["identifier"][0]["value"] == value


ROUTING = """
version = "fhir-tls-1"

[[destination]]
name = "fhir-secure"
kind = "fhir"
subscribes = ["A03"]
[destination.fhir]
base_url = "{mtls}"
[destination.fhir.tls]
ca_file = "ca.pem"
cert_file = "{client_cert}"
key_file = "{client_key}"
[destination.fhir.auth]
kind = "smart-backend"
token_url = "{token_url}"
client_id = "{client_id}"
private_key_file = "{key_file}"
key_id = "{key_id}"
algorithm = "ES384"
scope = "system/*.write"
[destination.policy]
max_attempts = 2
first_retry_seconds = 0.2

# An empty table: the system's CAs, which do not include the test CA.
[[destination]]
name = "fhir-untrusted"
kind = "fhir"
subscribes = ["A03"]
[destination.fhir]
base_url = "{https}"
[destination.fhir.tls]
[destination.policy]
max_attempts = 2
first_retry_seconds = 0.2
max_retry_seconds = 0.5
"""


async def test_lab_and_discharge_deliver_over_https(
    temporal_client: Client,
    https_server: str,
    mtls_server: str,
    pki: Pki,
    smart_keys: SmartClientKeys,
    tmp_path: Path,
) -> None:
    # ca_file is relative: read beside the routing file.
    (tmp_path / "ca.pem").write_bytes(pki.ca_cert.read_bytes())
    routing = tmp_path / "destinations.toml"
    routing.write_text(
        ROUTING.format(
            mtls=mtls_server,
            https=https_server,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            token_url=token_url(mtls_server),
            client_id=smart_keys.client_id,
            key_file=smart_keys.private_key_file,
            key_id=smart_keys.key_id,
        )
    )
    async with running_engine(
        temporal_client,
        https_server,
        task_queue="careweave-test-fhir-tls",
        destinations_file=routing,
        fhir_tls_ca_file=pki.ca_cert,
        pseudonym_key="test-fhir-tls-key",
    ) as engine:
        # The lab exchange writes its ServiceRequest with CAREWEAVE_FHIR_TLS_CA_FILE.
        order = sm.SampleOrder("TLS-8001")
        [ack] = await mllp_send(engine.mllp_port, [sm.lab_order(order, "TLS-8001-O")])
        assert "MSA|AA" in ack
        order_id = engine.lab_workflow_id(order.placer_order_number)
        await engine.wait_for_status(order_id, "ordered", timeout=60)
        written = await engine.handle(order_id).query("resources_written")
        # Mapping v2 writes the order's Patient (if absent) in the same transaction.
        [request_ref] = [ref for ref in written if ref.startswith("ServiceRequest/")]
        resource_type, resource_id = request_ref.split("/")
        assert (await engine.fhir.read(resource_type, resource_id))["status"] == "active"

        stay = sm.SampleStay("V-FTLS-1", patient=sm.SamplePatient(mrn="MRN-FTLS-1"))
        [ack] = await mllp_send(engine.mllp_port, [sm.adt_event(stay, "DS-FTLS-1", "A03")])
        assert "MSA|AA" in ack
        # Read back as the destination wrote it: over mutual TLS, with a SMART token.
        async with mtls_client(mtls_server, pki, smart_keys) as fhir:
            await wait_for_finished_encounter(fhir, "V-FTLS-1")

        patient_key = pseudonym(b"test-fhir-tls-key", "patient", sm.HOSPITAL, "MRN-FTLS-1")
        pending = await engine.wait_for_review(
            f"ordered-delivery/fhir-untrusted/{patient_key}", timeout=40
        )
        assert pending["reason"] == "delivery-failed"
        assert "after 2 attempt(s)" in str(pending["summary"])
        assert "certificate verification failed" in str(pending["summary"])
