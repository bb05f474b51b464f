"""HTTPS toward FHIR servers as configured: a destination's `tls` table only with an https://
base_url, CAREWEAVE_FHIR_TLS_* only with an https:// CAREWEAVE_FHIR_BASE_URL, and no
credentials over plain http to a host that is not loopback; every refusal names the place.
No network here."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from activities.ordered_delivery import DeliveryActivities
from adapters.tls import TlsConfigError
from models.destinations import DestinationTls, RoutingConfigError, load_routing
from models.fhir_auth import FhirAuthConfigError, sent_in_clear
from models.settings import Settings
from tests.support.certs import Pki
from workers.worker import lab_fhir_tls_context

ROUTING = """
version = "t-1"
[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03"]
[destination.fhir]
base_url = "{base_url}"
"""

BEARER = '[destination.fhir.auth]\nkind = "bearer"\ntoken_env = "CW_TOKEN"\n'


def smart(token_url: str) -> str:
    return (
        "[destination.fhir.auth]\n"
        'kind = "smart-backend"\n'
        f'token_url = "{token_url}"\n'
        'client_id = "careweave"\n'
        'private_key_file = "/etc/careweave/key.pem"\n'
        'key_id = "k1"\n'
        'scope = "system/*.write"\n'
    )


def write(tmp_path: Path, base_url: str, tables: str = "") -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(ROUTING.format(base_url=base_url) + tables)
    return path


@pytest.mark.parametrize(
    ("url", "in_clear"),
    [
        ("http://fhir.example.org/fhir", True),
        ("http://10.1.2.3:8080/fhir", True),
        ("HTTP://fhir.example.org/fhir", True),
        ("http://127.0.0.1:8080/fhir", False),
        ("http://127.9.9.9/fhir", False),
        ("http://localhost:8080/fhir", False),
        ("http://[::1]:8080/fhir", False),
        ("https://fhir.example.org/fhir", False),
    ],
)
def test_only_plain_http_off_the_machine_is_in_clear(url: str, in_clear: bool) -> None:
    assert sent_in_clear(url) is in_clear


def test_tls_table_on_an_https_destination_is_read_beside_the_routing_file(
    tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "ca.pem").write_bytes(pki.ca_cert.read_bytes())
    tls = (
        "[destination.fhir.tls]\n"
        'ca_file = "ca.pem"\n'
        f'cert_file = "{pki.client_cert}"\n'
        f'key_file = "{pki.client_key}"\n'
    )
    routing = load_routing(write(tmp_path, "https://fhir.example.org/fhir", tls))
    endpoint = routing.destinations[0].fhir
    assert endpoint is not None
    assert endpoint.tls == DestinationTls(
        ca_file=tmp_path / "ca.pem", cert_file=pki.client_cert, key_file=pki.client_key
    )


def test_tls_table_on_an_http_destination_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "http://127.0.0.1:8080/fhir", "[destination.fhir.tls]\n")
    with pytest.raises(
        RoutingConfigError,
        match=r"destinations\.toml: destination\[1\] \(fhir-platform\)\.fhir: .*"
        r"a tls table needs an https:// base_url",
    ):
        load_routing(path)


def test_bad_fhir_tls_table_names_the_destination_and_field(tmp_path: Path, pki: Pki) -> None:
    base = "https://fhir.example.org/fhir"
    missing = '[destination.fhir.tls]\nca_file = "missing-ca.pem"\n'
    with pytest.raises(RoutingConfigError, match=r"\(fhir-platform\)\.fhir\.tls\.ca_file"):
        load_routing(write(tmp_path, base, missing))
    half = f'[destination.fhir.tls]\ncert_file = "{pki.client_cert}"\n'
    with pytest.raises(RoutingConfigError, match=r"\(fhir-platform\)\.fhir\.tls: .*both cert"):
        load_routing(write(tmp_path, base, half))
    # server_name belongs to MLLP's table only (httpx checks the URL's host).
    other = '[destination.fhir.tls]\nserver_name = "fhir.example.org"\n'
    with pytest.raises(RoutingConfigError, match=r"\(fhir-platform\)\.fhir\.tls\.server_name"):
        load_routing(write(tmp_path, base, other))


def test_unusable_key_in_a_fhir_tls_table_stops_the_worker(tmp_path: Path, pki: Pki) -> None:
    tls = (
        f'[destination.fhir.tls]\ncert_file = "{pki.client_cert}"\nkey_file = "{pki.server_key}"\n'
    )
    routing = load_routing(write(tmp_path, "https://fhir.example.org/fhir", tls))
    with pytest.raises(
        RoutingConfigError, match=r"destination fhir-platform: fhir\.tls: key file .*does not match"
    ):
        DeliveryActivities(None, routing, task_queue="t")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base_url", "auth", "field"),
    [
        ("http://fhir.example.org/fhir", BEARER, "base_url"),
        ("http://fhir.example.org/fhir", smart("https://auth.example.org/token"), "base_url"),
        ("https://fhir.example.org/fhir", smart("http://auth.example.org/token"), "token_url"),
    ],
    ids=["bearer-base-url", "smart-base-url", "smart-token-url"],
)
def test_credentials_over_plain_http_off_the_machine_are_refused(
    tmp_path: Path, base_url: str, auth: str, field: str
) -> None:
    with pytest.raises(
        RoutingConfigError,
        match=rf"\(fhir-platform\)\.fhir: .*{field} http://\S+ is plain http:// to a host that "
        r"is not loopback.*use https://",
    ):
        load_routing(write(tmp_path, base_url, auth))


def test_credentials_over_loopback_http_are_allowed(tmp_path: Path) -> None:
    for base_url in ("http://127.0.0.1:8080/fhir", "http://localhost:8080/fhir"):
        assert load_routing(write(tmp_path, base_url, BEARER)).destinations[0].fhir
    no_credentials = load_routing(write(tmp_path, "http://fhir.example.org/fhir"))
    assert no_credentials.destinations[0].fhir is not None


def settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def test_lab_settings_refuse_credentials_over_plain_http_off_the_machine() -> None:
    bearer = {"fhir_auth_kind": "bearer", "fhir_bearer_token_env": "CW_TOKEN"}
    with pytest.raises(
        FhirAuthConfigError,
        match=r"CAREWEAVE_FHIR_AUTH_KIND=bearer: CAREWEAVE_FHIR_BASE_URL http://fhir\.example\.org"
        r"/fhir is plain http://",
    ):
        settings(fhir_base_url="http://fhir.example.org/fhir", **bearer).fhir_auth()
    smart_settings = {
        "fhir_auth_kind": "smart-backend",
        "fhir_smart_token_url": "http://auth.example.org/token",
        "fhir_smart_client_id": "careweave",
        "fhir_smart_private_key_file": "/etc/careweave/key.pem",
        "fhir_smart_key_id": "k1",
        "fhir_smart_scope": "system/*.write",
    }
    with pytest.raises(FhirAuthConfigError, match=r"CAREWEAVE_FHIR_SMART_TOKEN_URL http://"):
        settings(fhir_base_url="https://fhir.example.org/fhir", **smart_settings).fhir_auth()
    # The demo: credentials to a server on this machine.
    assert settings(fhir_base_url="http://127.0.0.1:8080/fhir", **bearer).fhir_auth()


def test_lab_tls_settings(pki: Pki) -> None:
    https = "https://fhir.example.org/fhir"
    assert lab_fhir_tls_context(settings(fhir_base_url=https)) is None
    context = lab_fhir_tls_context(settings(fhir_base_url=https, fhir_tls_ca_file=pki.ca_cert))
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    assert lab_fhir_tls_context(
        settings(
            fhir_base_url=https,
            fhir_tls_cert_file=pki.client_cert,
            fhir_tls_key_file=pki.client_key,
        )
    )
    with pytest.raises(TlsConfigError, match=r"CAREWEAVE_FHIR_BASE_URL http://\S+ is not https"):
        lab_fhir_tls_context(settings(fhir_tls_ca_file=pki.ca_cert))
    with pytest.raises(TlsConfigError, match="CAREWEAVE_FHIR_TLS_KEY_FILE is not set"):
        lab_fhir_tls_context(settings(fhir_base_url=https, fhir_tls_cert_file=pki.client_cert))
    with pytest.raises(TlsConfigError, match=rf"CAREWEAVE_FHIR_TLS_\*: CA file {pki.client_key}"):
        lab_fhir_tls_context(settings(fhir_base_url=https, fhir_tls_ca_file=pki.client_key))
