"""MLLP over TLS, with certificates made for the session (tests/support/certs.py).

Inbound: the real gateway (real Temporal behind it: AA means committed) with TLS and with
mutual TLS; OpenSSL's own client (`openssl s_client`) as a sender nobody here wrote; a
plain-TCP client on the TLS port is refused while a TLS sender is served. Outbound: the
MLLP client against the Node partner system (@medplum/hl7 over Node's `tls` server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest

from adapters.hl7v2.ack import parse_ack
from adapters.hl7v2.framing import END_BLOCK, encode_frame
from adapters.hl7v2.mllp_client import MllpClient, MllpConnectionError, MllpTlsError
from adapters.tls import client_tls_context
from tests.support.certs import Pki
from tests.support.engine import Engine
from tests.support.partner import Partner, running_partner
from workers.gateway import MllpGateway
from workers.sample_messages import LAB, SODIUM, SampleOrder, SamplePatient, lab_result

# A name that must never reach a log line (it is in every message sent here).
PATIENT = SamplePatient(family="Tlsonly", given="Wilhelmina", mrn="MRN-TLS-4711")


def result_message(placer: str) -> str:
    return lab_result(SampleOrder(placer, patient=PATIENT), placer, [SODIUM])


@contextlib.asynccontextmanager
async def tls_gateway(engine: Engine, pki: Pki, **overrides: object) -> AsyncIterator[MllpGateway]:
    settings = engine.settings.model_copy(
        update={
            "mllp_tls_cert_file": pki.server_cert,
            "mllp_tls_key_file": pki.server_key,
            **overrides,
        }
    )
    gateway = MllpGateway(engine.intake, settings)
    assert gateway.tls
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


def ack_code(ack: str) -> tuple[str, str]:
    code, control_id, _ = parse_ack(ack)
    return code, control_id


async def test_tls_sender_gets_aa_after_commit(engine: Engine, pki: Pki) -> None:
    async with (
        tls_gateway(engine, pki) as gateway,
        MllpClient(
            "127.0.0.1", gateway.port, timeout=20, ssl=client_tls_context(ca_file=pki.ca_cert)
        ) as client,
    ):
        assert ack_code(await client.send(result_message("TLS-1"))) == ("AA", "TLS-1")
        # A second message on the same TLS connection.
        assert ack_code(await client.send(result_message("TLS-2"))) == ("AA", "TLS-2")
    assert engine.store.receipt(LAB, "TLS-1") is not None


async def test_client_that_does_not_trust_the_gateway_gets_no_connection(
    engine: Engine, pki: Pki
) -> None:
    async with tls_gateway(engine, pki) as gateway:
        client = MllpClient(
            "127.0.0.1",
            gateway.port,
            timeout=10,
            ssl=client_tls_context(ca_file=pki.other_ca_cert),
        )
        with pytest.raises(MllpTlsError, match="certificate verification failed"):
            await client.send(result_message("TLS-UNTRUSTED"))
        # A certificate for 127.0.0.1 and localhost, not for another name.
        client = MllpClient(
            "127.0.0.1",
            gateway.port,
            timeout=10,
            ssl=client_tls_context(ca_file=pki.ca_cert),
            server_name="lab.example.org",
        )
        with pytest.raises(MllpTlsError, match=r"(?i)hostname mismatch"):
            await client.send(result_message("TLS-WRONG-NAME"))
    assert engine.store.receipt(LAB, "TLS-UNTRUSTED") is None


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    engine: Engine, pki: Pki
) -> None:
    async with tls_gateway(engine, pki, mllp_tls_client_ca_file=pki.ca_cert) as gateway:
        with_cert = client_tls_context(
            ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
        )
        async with MllpClient("127.0.0.1", gateway.port, timeout=20, ssl=with_cert) as client:
            assert ack_code(await client.send(result_message("MTLS-1"))) == ("AA", "MTLS-1")

        without_cert = client_tls_context(ca_file=pki.ca_cert)
        stranger = client_tls_context(
            ca_file=pki.ca_cert, cert_file=pki.stranger_cert, key_file=pki.stranger_key
        )
        for context, placer in ((without_cert, "MTLS-NOCERT"), (stranger, "MTLS-STRANGER")):
            client = MllpClient("127.0.0.1", gateway.port, timeout=10, ssl=context)
            # TLS 1.3: the refusal arrives after the client's side of the handshake, as an
            # alert on the first read or a closed connection; either is named a TLS failure.
            with pytest.raises(MllpTlsError):
                await client.send(result_message(placer))
            await client.close()
            assert engine.store.receipt(LAB, placer) is None


async def test_plain_tcp_on_the_tls_port_is_refused_and_tls_sender_unaffected(
    engine: Engine, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="careweave.gateway")
    async with tls_gateway(engine, pki) as gateway:
        # The TLS sender connects first and keeps its connection through the refusal.
        async with MllpClient(
            "127.0.0.1", gateway.port, timeout=20, ssl=client_tls_context(ca_file=pki.ca_cert)
        ) as tls_client:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(encode_frame(result_message("PLAIN-1").encode()))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(), 10)
            except ConnectionResetError:
                answer = b""
            writer.close()
            # Closed without an ACK (at most a TLS alert record, never an MLLP block).
            assert END_BLOCK not in answer
            assert not answer.startswith(b"\x0b")

            ack = await tls_client.send(result_message("TLS-BESIDE-PLAIN"))
            assert ack_code(ack) == ("AA", "TLS-BESIDE-PLAIN")
    assert engine.store.receipt(LAB, "PLAIN-1") is None
    refusals = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert refusals, "the refused plain-TCP connection is logged"
    for line in (r.getMessage() for r in caplog.records):
        assert PATIENT.family not in line and PATIENT.mrn not in line


async def test_handshake_never_started_is_closed_at_the_handshake_timeout(
    engine: Engine, pki: Pki
) -> None:
    async with tls_gateway(
        engine, pki, mllp_tls_handshake_timeout_seconds=0.5, mllp_max_connections=1
    ) as gateway:
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert loop.time() - started < 5
        # Its slot is free again: the only slot serves a TLS sender.
        await asyncio.sleep(0.1)
        async with MllpClient(
            "127.0.0.1", gateway.port, timeout=20, ssl=client_tls_context(ca_file=pki.ca_cert)
        ) as client:
            assert ack_code(await client.send(result_message("TLS-AFTER-SILENT")))[0] == "AA"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
async def test_openssl_s_client_gets_aa_from_the_tls_gateway(engine: Engine, pki: Pki) -> None:
    async with tls_gateway(engine, pki, mllp_tls_client_ca_file=pki.ca_cert) as gateway:
        process = await asyncio.create_subprocess_exec(
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{gateway.port}",
            "-CAfile",
            str(pki.ca_cert),
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
            "-cert",
            str(pki.client_cert),
            "-key",
            str(pki.client_key),
            "-quiet",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(encode_frame(result_message("OPENSSL-1").encode()))
            await process.stdin.drain()
            answer = await asyncio.wait_for(process.stdout.readuntil(END_BLOCK), 30)
        finally:
            if process.returncode is None:
                process.terminate()
            await process.wait()
    assert ack_code(answer.strip(b"\x0b\x1c\r").decode()) == ("AA", "OPENSSL-1")


# --- outbound: the MLLP client toward a partner that speaks TLS -----------------------


@pytest.fixture(scope="module")
def tls_partner(pki: Pki) -> Iterator[Partner]:
    with running_partner("tls-lab", tls_cert=pki.server_cert, tls_key=pki.server_key) as partner:
        yield partner


@pytest.fixture(scope="module")
def mtls_partner(pki: Pki) -> Iterator[Partner]:
    with running_partner(
        "mtls-lab",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_cert,
    ) as partner:
        yield partner


async def test_client_sends_over_tls_to_the_node_partner(tls_partner: Partner, pki: Pki) -> None:
    context = client_tls_context(ca_file=pki.ca_cert)
    async with MllpClient("127.0.0.1", tls_partner.mllp_port, timeout=10, ssl=context) as client:
        assert ack_code(await client.send(result_message("OUT-TLS-1"))) == ("AA", "OUT-TLS-1")
    received = [m["control_id"] for m in await tls_partner.amessages()]
    assert "OUT-TLS-1" in received


async def test_client_refuses_a_partner_it_does_not_trust(tls_partner: Partner, pki: Pki) -> None:
    context = client_tls_context(ca_file=pki.other_ca_cert)
    client = MllpClient("127.0.0.1", tls_partner.mllp_port, timeout=10, ssl=context)
    with pytest.raises(MllpTlsError, match="certificate verification failed"):
        await client.send(result_message("OUT-UNTRUSTED"))
    received = [m["control_id"] for m in await tls_partner.amessages()]
    assert "OUT-UNTRUSTED" not in received


async def test_plain_client_toward_a_tls_partner_fails_without_delivering(
    tls_partner: Partner,
) -> None:
    client = MllpClient("127.0.0.1", tls_partner.mllp_port, timeout=3)
    with pytest.raises(MllpConnectionError) as caught:
        await client.send(result_message("OUT-PLAIN"))
    await client.close()
    assert caught.type is not MllpTlsError or "TLS" in str(caught.value)
    received = [m["control_id"] for m in await tls_partner.amessages()]
    assert "OUT-PLAIN" not in received


async def test_client_certificate_for_a_partner_requiring_mutual_tls(
    mtls_partner: Partner, pki: Pki
) -> None:
    with_cert = client_tls_context(
        ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
    )
    async with MllpClient("127.0.0.1", mtls_partner.mllp_port, timeout=10, ssl=with_cert) as client:
        assert ack_code(await client.send(result_message("OUT-MTLS-1")))[0] == "AA"

    client = MllpClient(
        "127.0.0.1", mtls_partner.mllp_port, timeout=10, ssl=client_tls_context(ca_file=pki.ca_cert)
    )
    with pytest.raises(MllpConnectionError):
        await client.send(result_message("OUT-MTLS-NOCERT"))
    await client.close()
    received = [m["control_id"] for m in await mtls_partner.amessages()]
    assert "OUT-MTLS-1" in received and "OUT-MTLS-NOCERT" not in received
