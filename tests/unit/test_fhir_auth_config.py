"""FHIR credentials as configured: the routing file's auth table and the CAREWEAVE_FHIR_*
settings are validated with the place named; secrets that are missing stop the start
with the variable or file named; the client assertion carries the claims SMART requires."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from adapters.fhir.auth import (
    ASSERTION_LIFETIME_SECONDS,
    BearerToken,
    SmartBackendServices,
    auth_from_config,
    client_assertion,
    load_private_key,
)
from models.destinations import RoutingConfigError, load_routing
from models.fhir_auth import BearerTokenAuth, FhirAuthConfigError, SmartBackendAuth
from models.settings import Settings
from tests.support.smart_client import make_client_keys

ROUTING = """
version = "t-1"
[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03"]
[destination.fhir]
base_url = "http://127.0.0.1:8080/fhir"
[destination.fhir.auth]
{auth}
"""

SMART = """kind = "smart-backend"
token_url = "http://127.0.0.1:8080/auth/token"
client_id = "careweave"
private_key_file = "/etc/careweave/key.pem"
key_id = "k1"
algorithm = "ES384"
scope = "system/*.write"
"""


def routing_with(tmp_path: Path, auth: str) -> Path:
    path = tmp_path / "destinations.toml"
    path.write_text(ROUTING.format(auth=auth))
    return path


def test_routing_file_reads_both_auth_kinds(tmp_path: Path) -> None:
    smart = load_routing(routing_with(tmp_path, SMART)).destination("fhir-platform").fhir
    assert smart is not None
    assert smart.auth == SmartBackendAuth(
        kind="smart-backend",
        token_url="http://127.0.0.1:8080/auth/token",
        client_id="careweave",
        private_key_file=Path("/etc/careweave/key.pem"),
        key_id="k1",
        algorithm="ES384",
        scope="system/*.write",
    )
    bearer = load_routing(routing_with(tmp_path, 'kind = "bearer"\ntoken_env = "FHIR_TOKEN"'))
    endpoint = bearer.destination("fhir-platform").fhir
    assert endpoint is not None
    assert endpoint.auth == BearerTokenAuth(kind="bearer", token_env="FHIR_TOKEN")


def test_unknown_auth_kind_names_destination_and_field(tmp_path: Path) -> None:
    path = routing_with(tmp_path, 'kind = "basic"\ntoken_env = "X"')
    with pytest.raises(RoutingConfigError) as caught:
        load_routing(path)
    message = str(caught.value)
    assert "destination[1] (fhir-platform).fhir.auth:" in message
    assert "'bearer', 'smart-backend'" in message


def test_missing_smart_field_names_destination_and_field(tmp_path: Path) -> None:
    path = routing_with(tmp_path, SMART.replace('client_id = "careweave"\n', ""))
    with pytest.raises(
        RoutingConfigError,
        match=r"destination\[1\] \(fhir-platform\)\.fhir\.auth\.client_id: Field required",
    ):
        load_routing(path)


def test_bad_algorithm_and_extra_secret_field_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RoutingConfigError, match=r"fhir\.auth\.algorithm: Input should be 'RS384'"):
        load_routing(routing_with(tmp_path, SMART.replace("ES384", "HS256")))
    with pytest.raises(RoutingConfigError, match=r"fhir\.auth\.token: Extra inputs"):
        load_routing(routing_with(tmp_path, 'kind = "bearer"\ntoken_env = "T"\ntoken = "abc"'))


def test_old_bearer_token_env_field_says_what_replaced_it(tmp_path: Path) -> None:
    text = ROUTING.replace("[destination.fhir.auth]\n{auth}", 'bearer_token_env = "T"')
    path = tmp_path / "destinations.toml"
    path.write_text(text)
    with pytest.raises(RoutingConfigError, match=r"\(fhir-platform\)\.fhir: .*auth table"):
        load_routing(path)


def test_settings_name_the_missing_variables() -> None:
    assert Settings().fhir_auth() is None
    settings = Settings(fhir_auth_kind="smart-backend", fhir_smart_client_id="careweave")
    with pytest.raises(FhirAuthConfigError) as caught:
        settings.fhir_auth()
    message = str(caught.value)
    for variable in ("TOKEN_URL", "PRIVATE_KEY_FILE", "KEY_ID", "SCOPE"):
        assert f"CAREWEAVE_FHIR_SMART_{variable}: Field required" in message
    assert "CLIENT_ID" not in message
    with pytest.raises(FhirAuthConfigError, match="CAREWEAVE_FHIR_BEARER_TOKEN_ENV"):
        Settings(fhir_auth_kind="bearer").fhir_auth()


def test_missing_token_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    config = BearerTokenAuth(kind="bearer", token_env="CW_TEST_FHIR_TOKEN")
    monkeypatch.delenv("CW_TEST_FHIR_TOKEN", raising=False)
    with pytest.raises(
        FhirAuthConfigError, match=r"destination x: .*CW_TEST_FHIR_TOKEN is not set"
    ):
        auth_from_config(config, where="destination x")
    monkeypatch.setenv("CW_TEST_FHIR_TOKEN", "s3cret")
    auth = auth_from_config(config, where="destination x")
    assert isinstance(auth, BearerToken)
    assert "s3cret" not in repr(auth)


def test_key_file_missing_unreadable_or_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    keys = make_client_keys(tmp_path, "careweave", "ES384")
    config = keys.config("http://127.0.0.1:1/auth/token")
    assert isinstance(auth_from_config(config, where="d"), SmartBackendServices)

    missing = config.model_copy(update={"private_key_file": tmp_path / "gone.pem"})
    with pytest.raises(FhirAuthConfigError, match=r"d: private_key_file: cannot read .*gone\.pem"):
        auth_from_config(missing, where="d")
    not_pem = config.model_copy(update={"private_key_file": keys.jwks_file})
    with pytest.raises(FhirAuthConfigError, match="is not an unencrypted PEM private key"):
        auth_from_config(not_pem, where="d")
    wrong_type = config.model_copy(update={"algorithm": "RS384"})
    with pytest.raises(FhirAuthConfigError, match="is not an RSA key, as algorithm RS384 needs"):
        auth_from_config(wrong_type, where="d")


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_client_assertion_has_the_claims_smart_requires(tmp_path: Path, algorithm: str) -> None:
    keys = make_client_keys(tmp_path, "careweave", algorithm)  # type: ignore[arg-type]
    config = keys.config("http://127.0.0.1:9/auth/token")
    private_key = load_private_key(config, where="t")
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = time.time()
    first, second = (
        client_assertion(
            client_id="careweave",
            token_url=config.token_url,
            private_key=private_key,
            key_id=keys.key_id,
            algorithm=config.algorithm,
        )
        for _ in range(2)
    )
    header = jwt.get_unverified_header(first)
    assert header["alg"] == algorithm
    assert header["kid"] == keys.key_id
    claims = jwt.decode(
        first, public_pem, algorithms=[algorithm], audience=config.token_url, issuer="careweave"
    )
    assert claims["sub"] == "careweave"
    assert 0 < claims["exp"] - now <= 300
    assert claims["exp"] - claims["iat"] == ASSERTION_LIFETIME_SECONDS
    other = jwt.decode(second, public_pem, algorithms=[algorithm], audience=config.token_url)
    assert claims["jti"] != other["jti"]
