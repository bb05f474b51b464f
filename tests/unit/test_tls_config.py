"""TLS configuration: a bad, missing or mismatched file is refused naming the file (gateway
settings) or the destination and field (routing file). No network here."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from activities.ordered_delivery import mllp_tls_contexts
from adapters.tls import TlsConfigError, client_tls_context, server_tls_context
from models.destinations import MllpTls, RoutingConfigError, load_routing
from models.settings import Settings
from tests.support.certs import Pki
from workers.gateway import gateway_tls_context

ROUTING = """
version = "t-1"
[[destination]]
name = "billing"
kind = "mllp"
subscribes = ["A03"]
[destination.mllp]
host = "127.0.0.1"
port = 2577
receiving_application = "BILLING"
receiving_facility = "FIN"
"""


def test_server_context_is_tls12_or_later_and_mtls_requires_certificates(pki: Pki) -> None:
    plain = server_tls_context(pki.server_cert, pki.server_key)
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    mutual = server_tls_context(pki.server_cert, pki.server_key, client_ca_file=pki.ca_cert)
    assert mutual.verify_mode == ssl.CERT_REQUIRED


def test_missing_file_is_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsConfigError, match=rf"certificate file {missing}: cannot read"):
        server_tls_context(missing, pki.server_key)
    with pytest.raises(TlsConfigError, match=rf"key file {missing}: cannot read"):
        server_tls_context(pki.server_cert, missing)
    with pytest.raises(TlsConfigError, match=rf"CA file {missing}: cannot read"):
        server_tls_context(pki.server_cert, pki.server_key, client_ca_file=missing)


def test_file_of_the_wrong_kind_is_named(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match=rf"certificate file {junk}: not a PEM certificate"):
        server_tls_context(junk, pki.server_key)
    with pytest.raises(TlsConfigError, match=rf"key file {junk}: not a PEM private key"):
        server_tls_context(pki.server_cert, junk)
    # A key where the CA certificate belongs.
    with pytest.raises(TlsConfigError, match=rf"CA file {pki.client_key}: no PEM certificate"):
        client_tls_context(ca_file=pki.client_key)


def test_key_of_another_certificate_is_a_mismatch(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="does not match the certificate"):
        server_tls_context(pki.server_cert, pki.client_key)


def test_encrypted_key_is_refused_without_prompting(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsConfigError, match="encrypted"):
        server_tls_context(pki.server_cert, encrypted)


def test_client_context_checks_host_names_and_needs_cert_and_key_together(pki: Pki) -> None:
    context = client_tls_context(ca_file=pki.ca_cert)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_tls_context().verify_mode == ssl.CERT_REQUIRED  # system CAs
    with pytest.raises(TlsConfigError, match="both cert_file and key_file"):
        client_tls_context(cert_file=pki.client_cert)


def settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def test_gateway_settings(pki: Pki) -> None:
    assert gateway_tls_context(settings()) is None
    assert gateway_tls_context(
        settings(mllp_tls_cert_file=pki.server_cert, mllp_tls_key_file=pki.server_key)
    )
    with pytest.raises(TlsConfigError, match="CAREWEAVE_MLLP_TLS_KEY_FILE is not set"):
        gateway_tls_context(settings(mllp_tls_cert_file=pki.server_cert))
    with pytest.raises(TlsConfigError, match="CAREWEAVE_MLLP_TLS_CLIENT_CA_FILE is set but"):
        gateway_tls_context(settings(mllp_tls_client_ca_file=pki.ca_cert))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    return path


def test_tls_true_means_system_cas(tmp_path: Path) -> None:
    routing = load_routing(write(tmp_path, ROUTING + "tls = true\n"))
    endpoint = routing.destinations[0].mllp
    assert endpoint is not None and endpoint.tls == MllpTls()
    plain = load_routing(write(tmp_path, ROUTING + "tls = false\n")).destinations[0].mllp
    assert plain is not None and plain.tls is None
    assert "billing" in mllp_tls_contexts(routing)


def test_tls_table_paths_are_read_beside_the_routing_file(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca_cert.read_bytes())
    text = ROUTING + (
        "[destination.mllp.tls]\n"
        'ca_file = "ca.pem"\n'
        f'cert_file = "{pki.client_cert}"\n'
        f'key_file = "{pki.client_key}"\n'
        'server_name = "billing.example.org"\n'
    )
    tls = load_routing(write(tmp_path, text)).destinations[0].mllp.tls  # type: ignore[union-attr]
    assert tls is not None
    assert tls.ca_file == tmp_path / "ca.pem"
    assert tls.server_name == "billing.example.org"


def test_bad_tls_table_names_the_destination_and_field(tmp_path: Path, pki: Pki) -> None:
    missing = ROUTING + '[destination.mllp.tls]\nca_file = "missing-ca.pem"\n'
    with pytest.raises(RoutingConfigError, match=r"destination\[1\] \(billing\)\.mllp\.tls\.ca"):
        load_routing(write(tmp_path, missing))
    half = ROUTING + f'[destination.mllp.tls]\ncert_file = "{pki.client_cert}"\n'
    with pytest.raises(RoutingConfigError, match=r"\(billing\)\.mllp\.tls: .*both cert_file"):
        load_routing(write(tmp_path, half))
    unknown = ROUTING + '[destination.mllp.tls]\nverify = "no"\n'
    with pytest.raises(RoutingConfigError, match=r"\(billing\)\.mllp\.tls\.verify"):
        load_routing(write(tmp_path, unknown))


def test_unusable_key_in_routing_stops_the_worker_naming_destination_and_file(
    tmp_path: Path, pki: Pki
) -> None:
    text = ROUTING + (
        f'[destination.mllp.tls]\ncert_file = "{pki.client_cert}"\nkey_file = "{pki.server_key}"\n'
    )
    routing = load_routing(write(tmp_path, text))
    with pytest.raises(RoutingConfigError, match=r"destination billing: mllp\.tls: key file .*"):
        mllp_tls_contexts(routing)
