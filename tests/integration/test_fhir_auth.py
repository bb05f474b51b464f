"""FhirClient with credentials against the project's FHIR server with authorization on:
SMART Backend Services (the server verifies the signed client assertion with `jose` and
issues short-lived opaque tokens) and a static bearer token. Token reuse is counted by
the server itself (GET /auth/stats), not by the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from adapters.fhir import (
    BearerToken,
    FhirClient,
    FhirRejectedError,
    FhirRetryableError,
    SmartBackendServices,
    auth_from_config,
)
from models.fhir_auth import BearerTokenAuth
from tests.support.fhir_server import free_port, running_fhir_server, token_url, tokens_issued
from tests.support.smart_client import SmartClientKeys, make_client_keys

STATIC_TOKEN = "static-test-token-4f9a"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SmartClientKeys]:
    directory = tmp_path_factory.mktemp("smart-keys")
    stranger = directory / "stranger"
    stranger.mkdir()
    return {
        "RS384": make_client_keys(directory, "careweave", "RS384"),
        "ES384": make_client_keys(directory, "careweave-es", "ES384"),
        # Same client id and key id as the registered one, another key pair.
        "stranger": make_client_keys(stranger, "careweave", "RS384"),
    }


@pytest.fixture(scope="module")
def auth_server(keys: dict[str, SmartClientKeys]) -> Iterator[str]:
    clients = {keys[alg].client_id: keys[alg].jwks_file for alg in ("RS384", "ES384")}
    with running_fhir_server(smart_clients=clients, static_token=STATIC_TOKEN) as base_url:
        yield base_url


@contextlib.asynccontextmanager
async def fhir_server(port: int | None = None, **options: Any) -> AsyncIterator[str]:
    """A server of its own for one test, started off the event loop (the session's
    worker may still be driving other tests' exchanges on it)."""
    with contextlib.ExitStack() as stack:
        yield await asyncio.to_thread(stack.enter_context, running_fhir_server(port, **options))


def smart(keys: SmartClientKeys, base_url: str) -> SmartBackendServices:
    auth = auth_from_config(keys.config(token_url(base_url)), where="test")
    assert isinstance(auth, SmartBackendServices)
    return auth


def patient(value: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:careweave:test:auth", "value": value}],
        "name": [{"family": "Auth", "given": ["Test"]}],
    }


def transaction(value: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient(value),
                "request": {
                    "method": "PUT",
                    "url": f"Patient?identifier=urn:careweave:test:auth|{value}",
                },
            }
        ],
    }


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
async def test_smart_backend_client_writes_and_reads(
    auth_server: str, keys: dict[str, SmartClientKeys], algorithm: str
) -> None:
    async with FhirClient(auth_server, auth=smart(keys[algorithm], auth_server)) as fhir:
        created = await fhir.conditional_create(
            patient(f"smart-{algorithm}"), f"identifier=urn:careweave:test:auth|smart-{algorithm}"
        )
        read = await fhir.read("Patient", created["id"])
    assert read["identifier"][0]["value"] == f"smart-{algorithm}"
    # The same read without credentials is refused: the write above did need the token.
    async with FhirClient(auth_server) as anonymous:
        with pytest.raises(FhirRejectedError) as refused:
            await anonymous.read("Patient", created["id"])
    assert refused.value.status_code == 401


async def test_concurrent_requests_and_a_transaction_share_one_token(
    auth_server: str, keys: dict[str, SmartClientKeys]
) -> None:
    before = tokens_issued(auth_server)
    async with FhirClient(auth_server, auth=smart(keys["RS384"], auth_server)) as fhir:
        searches = [fhir.search("Patient", {"_count": "1"}) for _ in range(20)]
        await asyncio.gather(*searches, fhir.transaction(transaction("shared-token")))
        found = await fhir.search("Patient", {"identifier": "urn:careweave:test:auth|shared-token"})
    assert len(found) == 1
    assert tokens_issued(auth_server) - before == 1


async def test_token_past_its_lifetime_is_replaced(keys: dict[str, SmartClientKeys]) -> None:
    clients = {keys["RS384"].client_id: keys["RS384"].jwks_file}
    async with fhir_server(smart_clients=clients, token_lifetime_seconds=2) as base_url:
        async with FhirClient(base_url, auth=smart(keys["RS384"], base_url)) as fhir:
            await fhir.search("Patient", {})
            await fhir.search("Patient", {})
            assert tokens_issued(base_url) == 1
            await asyncio.sleep(3)
            await fhir.transaction(transaction("after-expiry"))
            assert tokens_issued(base_url) == 2


async def test_token_the_server_no_longer_knows_is_replaced_once(
    keys: dict[str, SmartClientKeys],
) -> None:
    """A restarted server forgets its tokens: the 401 drops the cached one, one new fetch."""
    clients = {keys["RS384"].client_id: keys["RS384"].jwks_file}
    port = free_port()
    auth = None
    async with fhir_server(port, smart_clients=clients) as base_url:
        auth = smart(keys["RS384"], base_url)
        async with FhirClient(base_url, auth=auth) as fhir:
            await fhir.search("Patient", {})
    async with fhir_server(port, smart_clients=clients) as base_url:
        async with FhirClient(base_url, auth=auth) as fhir:
            created = await fhir.transaction(transaction("after-restart"))
            await fhir.search("Patient", {})
        assert created["type"] == "transaction-response"
        assert tokens_issued(base_url) == 1


async def test_client_key_the_server_does_not_know_is_refused(
    auth_server: str, keys: dict[str, SmartClientKeys]
) -> None:
    async with FhirClient(auth_server, auth=smart(keys["stranger"], auth_server)) as fhir:
        with pytest.raises(FhirRejectedError) as refused:
            await fhir.search("Patient", {})
    message = str(refused.value)
    assert refused.value.status_code == 401
    assert "token endpoint refused the client: invalid_client" in message
    assert "eyJ" not in message  # neither the assertion nor a token leaks into the error

    unknown = (
        keys["RS384"].config(token_url(auth_server)).model_copy(update={"client_id": "nobody"})
    )
    async with FhirClient(auth_server, auth=auth_from_config(unknown, where="t")) as fhir:
        with pytest.raises(FhirRejectedError, match="invalid_client \\(unknown client\\)"):
            await fhir.search("Patient", {})


async def test_no_credentials_against_require_auth_is_refused() -> None:
    async with fhir_server(require_auth=True) as base_url:
        async with FhirClient(base_url) as fhir:
            capability = await fhir.capability()  # metadata stays open for discovery
            with pytest.raises(FhirRejectedError) as refused:
                await fhir.conditional_create(patient("anonymous"), "identifier=x|y")
        async with httpx.AsyncClient(timeout=5) as http:
            raw = await http.get(f"{base_url}/Patient")
    assert capability["resourceType"] == "CapabilityStatement"
    assert refused.value.status_code == 401
    assert "This server requires a bearer token" in refused.value.diagnostics
    assert raw.headers["WWW-Authenticate"].startswith("Bearer")


async def test_bearer_token_right_and_wrong(
    auth_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CW_TEST_FHIR_TOKEN", STATIC_TOKEN)
    configured = auth_from_config(
        BearerTokenAuth(kind="bearer", token_env="CW_TEST_FHIR_TOKEN"), where="t"
    )
    async with FhirClient(auth_server, auth=configured) as fhir:
        written = await fhir.transaction(transaction("bearer"))
    assert written["type"] == "transaction-response"

    async with FhirClient(auth_server, auth=BearerToken("not-the-token")) as fhir:
        with pytest.raises(FhirRejectedError) as refused:
            await fhir.search("Patient", {})
    assert refused.value.status_code == 401
    assert "Unknown access token" in refused.value.diagnostics
    assert "not-the-token" not in str(refused.value)


async def test_unreachable_token_endpoint_is_retryable(
    auth_server: str, keys: dict[str, SmartClientKeys]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/auth/token"
    config = keys["RS384"].config(nowhere)
    async with FhirClient(auth_server, auth=auth_from_config(config, where="t")) as fhir:
        with pytest.raises(FhirRetryableError, match="token endpoint: ConnectError"):
            await fhir.search("Patient", {})
