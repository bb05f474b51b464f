"""The API accepts an external identity provider's tokens through its JWKS URL, as
configured in production (auth_jwks_url, auth_jwks_issuer): the keys come over real
HTTP from a JWKS document served on a loopback port, nothing is mocked."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from models.audit import AuditAction, AuditOutcome
from models.identity import Role
from tests.support.api import RunningApi, running_api
from tests.support.engine import Engine
from tests.support.identity_provider import (
    IdentityProvider,
    new_rsa_key,
    running_identity_provider,
)


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with running_identity_provider() as provider:
        yield provider


@pytest.fixture(scope="module")
async def api(engine: Engine, idp: IdentityProvider) -> AsyncIterator[RunningApi]:
    async with running_api(
        engine, auth_jwks_url=idp.jwks_url, auth_jwks_issuer=idp.issuer
    ) as running:
        yield running


@pytest.fixture
async def http(api: RunningApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused_as_invalid_token(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert answer.json()["issue"][0]["code"] == "login"
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


async def test_a_token_of_the_identity_provider_is_accepted(
    engine: Engine, api: RunningApi, idp: IdentityProvider, http: httpx.AsyncClient
) -> None:
    token = idp.token("ops.alvarez@idp", [Role.OPS], audience=engine.settings.auth_audience)
    answer = await http.get("/reviews", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert "reviews" in answer.json()
    assert idp.jwks_fetches >= 1
    listed = [
        entry
        for entry in api.audit
        if entry.action is AuditAction.ACCESS and entry.outcome is AuditOutcome.SUCCESS
    ]
    assert [entry.actor for entry in listed] == ["ops.alvarez@idp"]

    # The roles come from the IdP's token: an ops identity still may not decide.
    answer = await http.post(
        "/reviews/order-to-result/ANY/1/decision",
        json={"review_id": "r", "action": "approve", "reason": "checked"},
        headers=bearer(token),
    )
    assert answer.status_code == 403


async def test_a_token_signed_by_another_key_under_the_idp_key_id_is_refused(
    engine: Engine, idp: IdentityProvider, http: httpx.AsyncClient
) -> None:
    forged = idp.token(
        "intruder",
        [Role.OPS, Role.REVIEWER],
        audience=engine.settings.auth_audience,
        signing_key=new_rsa_key(),
    )
    assert_refused_as_invalid_token(await http.get("/reviews", headers=bearer(forged)))


async def test_a_token_of_the_idp_for_another_audience_is_refused(
    idp: IdentityProvider, http: httpx.AsyncClient
) -> None:
    token = idp.token("ops.alvarez@idp", [Role.OPS], audience="some-other-app")
    answer = await http.get("/reviews", headers=bearer(token))
    assert_refused_as_invalid_token(answer)
    assert answer.json()["issue"][0]["diagnostics"] == "token not issued for this API"


def closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_jwks_url_refuses_the_token_but_not_careweaves_own(
    engine: Engine, idp: IdentityProvider
) -> None:
    unreachable = f"http://127.0.0.1:{closed_loopback_port()}/.well-known/jwks.json"
    async with (
        running_api(engine, auth_jwks_url=unreachable, auth_jwks_issuer=idp.issuer) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=60) as http,
    ):
        token = idp.token("ops.alvarez@idp", [Role.OPS], audience=engine.settings.auth_audience)
        assert_refused_as_invalid_token(await http.get("/reviews", headers=bearer(token)))
        # An IdP outage does not lock out the users of Careweave's own issuer.
        answer = await http.get("/reviews", headers=bearer(api.token("ops.local", Role.OPS)))
        assert answer.status_code == 200, answer.text
