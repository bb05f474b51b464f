"""The review and codec API over real HTTP (uvicorn on a free port), deciding reviews of
real exchanges on the session's Temporal dev server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.contrib.pydantic import pydantic_data_converter

from models.audit import AuditAction, AuditOutcome
from models.identity import Role
from tests.support.api import RunningApi, running_api
from tests.support.engine import Engine, mllp_send
from workers import sample_messages as sm
from workers.auth import TokenIssuer, load_or_create_signing_key
from workers.payload_codec import ENCODING

UI_ORIGIN = "http://127.0.0.1:8233"


@pytest.fixture(scope="module")
async def api(engine: Engine) -> AsyncIterator[RunningApi]:
    async with running_api(engine) as running:
        yield running


@pytest.fixture
async def http(api: RunningApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as client:
        yield client


async def pending_exchange(engine: Engine, number: str) -> tuple[str, str]:
    """An order-to-result exchange waiting for a reviewer (unmapped local code)."""
    order = sm.SampleOrder(number, local_code="ZZX9", text="Experimental")
    await mllp_send(
        engine.mllp_port,
        [sm.lab_order(order, f"{number}-O"), sm.lab_result(order, f"{number}-R", [sm.UNMAPPED])],
    )
    workflow_id = engine.lab_workflow_id(number)
    pending = await engine.wait_for_review(workflow_id)
    return workflow_id, str(pending["review_id"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def decision(review_id: str, reason: str = "local code checked with the lab") -> dict[str, str]:
    return {"review_id": review_id, "action": "approve", "reason": reason}


async def still_pending(engine: Engine, workflow_id: str, review_id: str) -> bool:
    pending = await engine.handle(workflow_id).query("pending_review")
    history = await engine.handle(workflow_id).query("review_history")
    return pending is not None and pending["review_id"] == review_id and history == []


async def test_decision_without_a_token_is_refused_and_changes_nothing(
    engine: Engine, api: RunningApi, http: httpx.AsyncClient
) -> None:
    workflow_id, review_id = await pending_exchange(engine, "API-5001")
    answer = await http.post(f"/reviews/{workflow_id}/decision", json=decision(review_id))
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert answer.json()["issue"][0]["code"] == "login"

    answer = await http.post(
        f"/reviews/{workflow_id}/decision",
        json=decision(review_id),
        headers=bearer("not-a-jwt"),
    )
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert await still_pending(engine, workflow_id, review_id)
    refused = [e for e in api.audit if e.exchange == workflow_id]
    assert [e.outcome for e in refused] == [AuditOutcome.REFUSED, AuditOutcome.REFUSED]


async def test_ops_cannot_decide_but_a_reviewer_can_and_is_recorded(
    engine: Engine, api: RunningApi, http: httpx.AsyncClient
) -> None:
    workflow_id, review_id = await pending_exchange(engine, "API-5002")
    answer = await http.post(
        f"/reviews/{workflow_id}/decision",
        json=decision(review_id),
        headers=bearer(api.token("ops-ana", Role.OPS)),
    )
    assert answer.status_code == 403
    assert answer.json()["issue"][0]["code"] == "forbidden"
    assert await still_pending(engine, workflow_id, review_id)

    # Malformed bodies are refused before anything reaches the workflow.
    reviewer = bearer(api.token("rev-bo", Role.REVIEWER))
    for bad in ({"review_id": review_id, "action": "approve"}, {"action": "bless", "x": 1}):
        answer = await http.post(f"/reviews/{workflow_id}/decision", json=bad, headers=reviewer)
        assert answer.status_code == 422, answer.text
        assert answer.json()["resourceType"] == "OperationOutcome"
    assert await still_pending(engine, workflow_id, review_id)

    # The body cannot choose who decided: the token's subject is recorded.
    sneaky = {**decision(review_id), "reviewer": "someone-else"}
    answer = await http.post(f"/reviews/{workflow_id}/decision", json=sneaky, headers=reviewer)
    assert answer.status_code == 422
    answer = await http.post(
        f"/reviews/{workflow_id}/decision", json=decision(review_id), headers=reviewer
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["decision"]["reviewer"] == "rev-bo"
    await engine.wait_for_status(workflow_id, "final")
    history = await engine.handle(workflow_id).query("review_history")
    assert history[-1]["decision"]["reviewer"] == "rev-bo"
    assert history[-1]["decision"]["reviewer_role"] == "reviewer"
    assert history[-1]["decision"]["identity_issuer"] == "careweave"
    # The API's proof rode with it: the worker accepts no decision without one.
    assert history[-1]["decision"]["proof"]

    answer = await http.post(
        f"/reviews/{workflow_id}/decision", json=decision(review_id), headers=reviewer
    )
    assert answer.status_code == 409
    assert "no review is pending" in answer.json()["issue"][0]["diagnostics"]
    assert len(await engine.handle(workflow_id).query("review_history")) == 1

    decisions = [e for e in api.audit if e.exchange == workflow_id]
    assert [(e.actor, e.outcome) for e in decisions] == [
        ("ops-ana", AuditOutcome.REFUSED),
        ("rev-bo", AuditOutcome.SUCCESS),
        ("rev-bo", AuditOutcome.REFUSED),
    ]


async def test_expired_and_foreign_tokens_are_refused(
    engine: Engine, api: RunningApi, http: httpx.AsyncClient
) -> None:
    workflow_id, review_id = await pending_exchange(engine, "API-5003")
    key = load_or_create_signing_key(engine.settings.resolved_signing_key_file)
    hour = timedelta(hours=1)
    expired = TokenIssuer(key, issuer="careweave", audience="careweave-api", ttl=hour).issue(
        "rev-old", [Role.REVIEWER], now=datetime.now(UTC) - 2 * hour
    )
    wrong_audience = TokenIssuer(key, issuer="careweave", audience="another-api", ttl=hour)
    wrong_issuer = TokenIssuer(key, issuer="someone", audience="careweave-api", ttl=hour)
    other_key = TokenIssuer(
        load_or_create_signing_key(engine.settings.state_dir / "other.pem"),
        issuer="careweave",
        audience="careweave-api",
        ttl=hour,
    )
    for token, why in (
        (expired, "expired"),
        (wrong_audience.issue("rev-x", [Role.REVIEWER]), "not issued for this API"),
        (wrong_issuer.issue("rev-x", [Role.REVIEWER]), "unknown issuer"),
        (other_key.issue("rev-x", [Role.REVIEWER]), "invalid token"),
    ):
        answer = await http.post(
            f"/reviews/{workflow_id}/decision", json=decision(review_id), headers=bearer(token)
        )
        assert answer.status_code == 401, why
        assert why in answer.json()["issue"][0]["diagnostics"]
    assert await still_pending(engine, workflow_id, review_id)

    answer = await http.post(
        "/reviews/order-to-result/GENHOSP/NO-SUCH/decision",
        json=decision("r1"),
        headers=bearer(api.token("rev-bo", Role.REVIEWER)),
    )
    assert answer.status_code == 404


async def test_password_login_and_review_list(
    engine: Engine, api: RunningApi, http: httpx.AsyncClient
) -> None:
    workflow_id, review_id = await pending_exchange(engine, "API-5004")
    api.users.add("ops-cy", "correct horse battery", [Role.OPS])
    wrong = await http.post("/auth/token", data={"username": "ops-cy", "password": "nope-nope"})
    unknown = await http.post("/auth/token", data={"username": "nobody", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()  # nothing tells which usernames exist
    assert (await http.get("/reviews")).status_code == 401

    answer = await http.post(
        "/auth/token", data={"username": "ops-cy", "password": "correct horse battery"}
    )
    assert answer.status_code == 200
    token = answer.json()
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == engine.settings.auth_token_ttl_seconds
    identity = await api.verifier.verify(token["access_token"])
    assert identity.subject == "ops-cy"
    assert identity.roles == {Role.OPS}

    listed = await http.get("/reviews", headers=bearer(token["access_token"]))
    assert listed.status_code == 200
    reviews = {item["workflow_id"]: item["review"] for item in listed.json()["reviews"]}
    assert reviews[workflow_id]["review_id"] == review_id
    assert reviews[workflow_id]["reason"] == "unmapped-code"
    logins = [e for e in api.audit if e.action is AuditAction.LOGIN]
    assert [(e.actor, e.outcome) for e in logins][-3:] == [
        ("ops-cy", AuditOutcome.REFUSED),
        ("nobody", AuditOutcome.REFUSED),
        ("ops-cy", AuditOutcome.SUCCESS),
    ]


async def test_password_guessing_is_throttled(engine: Engine) -> None:
    """After five failures in a minute the username is refused, even with the right
    password; other users are not; the API's own process keeps the count (a fresh one here)."""
    async with (
        running_api(engine) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=60) as http,
    ):
        api.users.add("rev-guessed", "the right password", [Role.REVIEWER])
        api.users.add("rev-other", "another password", [Role.REVIEWER])
        for _ in range(engine.settings.auth_login_failures_per_minute):
            wrong = await http.post(
                "/auth/token", data={"username": "rev-guessed", "password": "guess"}
            )
            assert wrong.status_code == 401
        right = await http.post(
            "/auth/token", data={"username": "rev-guessed", "password": "the right password"}
        )
        assert right.status_code == 429
        assert right.headers["retry-after"] == "60"
        assert right.json()["issue"][0]["code"] == "throttled"
        form = await http.post(
            "/login", data={"username": "rev-guessed", "password": "the right password"}
        )
        assert form.status_code == 429
        assert "careweave_session" not in form.headers.get("set-cookie", "")
        other = await http.post(
            "/auth/token", data={"username": "rev-other", "password": "another password"}
        )
        assert other.status_code == 200
        throttled = [e for e in api.audit if e.detail == "throttled"]
        assert [(e.actor, e.outcome) for e in throttled] == [
            ("rev-guessed", AuditOutcome.REFUSED),
            ("rev-guessed", AuditOutcome.REFUSED),
        ]


async def payloads_json(api: RunningApi, *values: object) -> tuple[list[Payload], str]:
    originals = pydantic_data_converter.payload_converter.to_payloads(list(values))
    encoded = await api.codec.encode(originals)
    assert all(p.metadata["encoding"] == ENCODING for p in encoded)
    return originals, json_format.MessageToJson(Payloads(payloads=encoded))


def read_payloads(body: str) -> list[Payload]:
    return list(json_format.Parse(body, Payloads()).payloads)


async def test_codec_decode_needs_credentials_and_round_trips(
    api: RunningApi, http: httpx.AsyncClient, engine: Engine
) -> None:
    originals, body = await payloads_json(api, {"review": "r1"}, "a result", 42)
    ui_headers = {
        "Origin": UI_ORIGIN,
        "Content-Type": "application/json",
        "X-Namespace": "default",
    }
    refused = await http.post("/codec/decode", content=body, headers=ui_headers)
    assert refused.status_code == 401
    # The UI can read the refusal: the answer carries its origin.
    assert refused.headers["access-control-allow-origin"] == UI_ORIGIN

    api.users.add("nobody-role", "nobody-role password", [Role.OPS])
    reviewer_only_forbidden = await http.post(
        "/codec/decode",
        content=body,
        headers={**ui_headers, **bearer(api.issuer.issue("nobody-role", ()))},
    )
    assert reviewer_only_forbidden.status_code == 403

    decoded = await http.post(
        "/codec/decode", content=body, headers={**ui_headers, **bearer(api.token("ops", Role.OPS))}
    )
    assert decoded.status_code == 200, decoded.text
    assert read_payloads(decoded.text) == originals
    assert json.loads(decoded.text)["payloads"][0]["metadata"]["encoding"]  # base64 proto JSON
    # The decode is on the hash-chained trail, attributed to the token's subject.
    decodes = [
        record
        for record in engine.store.audit_log().records(limit=200, newest_first=True)
        if record.action == AuditAction.DECODE and record.actor == "ops"
    ]
    assert decodes and decodes[0].outcome == AuditOutcome.SUCCESS
    assert engine.store.audit_log().verify().ok

    encoded = await http.post(
        "/codec/encode",
        content=json_format.MessageToJson(Payloads(payloads=originals)),
        headers={**ui_headers, **bearer(api.token("rev", Role.REVIEWER))},
    )
    assert encoded.status_code == 200
    assert await api.codec.decode(read_payloads(encoded.text)) == originals

    malformed = await http.post(
        "/codec/decode", content="{not json", headers=bearer(api.token("ops", Role.OPS))
    )
    assert malformed.status_code == 422
    assert malformed.json()["resourceType"] == "OperationOutcome"
    decodes = [e for e in api.audit if e.action is AuditAction.DECODE]
    assert [(e.actor, e.outcome) for e in decodes][-3:] == [
        ("anonymous", AuditOutcome.REFUSED),
        ("nobody-role", AuditOutcome.REFUSED),
        ("ops", AuditOutcome.SUCCESS),
    ]


async def test_codec_decode_shows_a_forged_plaintext_payload_as_it_is(
    api: RunningApi, http: httpx.AsyncClient
) -> None:
    # The worker refuses such a payload; the operator looking at the history must see it.
    forged = pydantic_data_converter.payload_converter.to_payloads(
        [{"review_id": "r1", "reviewer": "mallory"}]
    )
    [encrypted] = await api.codec.encode(forged)
    body = json_format.MessageToJson(Payloads(payloads=[*forged, encrypted]))
    decoded = await http.post(
        "/codec/decode", content=body, headers=bearer(api.token("ops", Role.OPS))
    )
    assert decoded.status_code == 200, decoded.text
    assert read_payloads(decoded.text) == [*forged, *forged]


async def test_cors_preflight_answers_only_the_ui_origins(http: httpx.AsyncClient) -> None:
    for origin in (UI_ORIGIN, "http://localhost:8233"):
        preflight = await http.options(
            "/codec/decode",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        assert preflight.headers["access-control-allow-credentials"] == "true"
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"content-type", "x-namespace", "authorization"} <= {
            h.strip() for h in allowed.split(",")
        }

    foreign = await http.options(
        "/codec/decode",
        headers={
            "Origin": "http://127.0.0.1:9999",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert "access-control-allow-origin" not in foreign.headers
    simple = await http.post("/codec/decode", content="{}", headers={"Origin": "http://evil.test"})
    assert "access-control-allow-origin" not in simple.headers


async def test_browser_login_cookie_decodes_for_the_ui(
    api: RunningApi, http: httpx.AsyncClient
) -> None:
    api.users.add("rev-di", "a long reviewer password", [Role.REVIEWER])
    page = await http.get("/login")
    assert page.status_code == 200
    assert 'name="password"' in page.text

    bad = await http.post("/login", data={"username": "rev-di", "password": "wrong-one"})
    assert bad.status_code == 401
    assert "set-cookie" not in bad.headers

    signed_in = await http.post(
        "/login",
        data={"username": "rev-di", "password": "a long reviewer password", "next": "/codec"},
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/codec"
    cookie = signed_in.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/;"):
        assert attribute in cookie + ";"
    session = signed_in.cookies["careweave_session"]
    assert (await api.verifier.verify(session)).subject == "rev-di"

    originals, body = await payloads_json(api, "from the UI")
    # A fresh client, as the browser's fetch from the UI: only the cookie identifies it.
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as browser:
        browser.cookies.set("careweave_session", session, path="/")
        decoded = await browser.post(
            "/codec/decode",
            content=body,
            headers={"Origin": UI_ORIGIN, "Content-Type": "application/json"},
        )
        assert decoded.status_code == 200, decoded.text
        assert decoded.headers["access-control-allow-credentials"] == "true"
        assert read_payloads(decoded.text) == originals
        # The cookie never authorizes a review decision (bearer tokens only there).
        listed = await browser.get("/reviews", headers={"Cookie": f"careweave_session={session}"})
        assert listed.status_code == 401


async def test_a_removed_user_or_withdrawn_role_stops_working_before_the_token_expires(
    engine: Engine, api: RunningApi, http: httpx.AsyncClient
) -> None:
    workflow_id, review_id = await pending_exchange(engine, "API-3301")
    token = api.token("rev-leaving", Role.REVIEWER)
    assert (await http.get("/reviews", headers=bearer(token))).status_code == 200

    api.users.add("rev-leaving", "rev-leaving test password", [Role.OPS])
    refused = await http.post(
        f"/reviews/{workflow_id}/decision", json=decision(review_id), headers=bearer(token)
    )
    assert refused.status_code == 403, refused.text
    assert await still_pending(engine, workflow_id, review_id)

    assert api.users.remove("rev-leaving")
    gone = await http.get("/reviews", headers=bearer(token))
    assert gone.status_code == 401
    assert "no longer exists" in gone.text
    assert api.audit[-1].outcome == AuditOutcome.REFUSED
    assert api.audit[-1].actor == "rev-leaving"
