"""Credentials through the engine: the lab exchange writes with the CAREWEAVE_FHIR_SMART_*
settings, the discharge destination with its routing-file auth table, each client with
its own token for the worker's life; without credentials the refusal goes to review
after one attempt. Real parts: MLLP -> gateway -> Temporal -> worker -> the FHIR server
with authorization on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.support.engine import Engine, mllp_send, running_engine, wait_for_finished_encounter
from tests.support.fhir_server import running_fhir_server, token_url, tokens_issued
from tests.support.smart_client import SmartClientKeys, make_client_keys
from workers import sample_messages as sm

ROUTING = """
version = "auth-1"

[[destination]]
name = "fhir-platform"
kind = "fhir"
subscribes = ["A03"]
[destination.fhir]
base_url = "{fhir}"
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
"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SmartClientKeys]:
    directory = tmp_path_factory.mktemp("smart-keys-e2e")
    return {
        "lab": make_client_keys(directory, "careweave-lab", "RS384"),
        "discharge": make_client_keys(directory, "careweave-discharge", "ES384"),
    }


@pytest.fixture(scope="module")
def auth_server(keys: dict[str, SmartClientKeys]) -> Iterator[str]:
    clients = {k.client_id: k.jwks_file for k in keys.values()}
    with running_fhir_server(smart_clients=clients) as base_url:
        yield base_url


def order_id(engine: Engine, order: sm.SampleOrder) -> str:
    return engine.lab_workflow_id(order.placer_order_number)


async def test_lab_and_discharge_write_with_their_own_credentials(
    temporal_client: Client,
    auth_server: str,
    keys: dict[str, SmartClientKeys],
    tmp_path: Path,
) -> None:
    lab, discharge = keys["lab"], keys["discharge"]
    routing = tmp_path / "destinations.toml"
    routing.write_text(
        ROUTING.format(
            fhir=auth_server,
            token_url=token_url(auth_server),
            client_id=discharge.client_id,
            key_file=discharge.private_key_file,
            key_id=discharge.key_id,
        )
    )
    async with running_engine(
        temporal_client,
        auth_server,
        task_queue="careweave-test-fhir-auth",
        destinations_file=routing,
        fhir_auth_kind="smart-backend",
        fhir_smart_token_url=token_url(auth_server),
        fhir_smart_client_id=lab.client_id,
        fhir_smart_private_key_file=lab.private_key_file,
        fhir_smart_key_id=lab.key_id,
        fhir_smart_scope="system/*.read system/*.write",
    ) as engine:
        orders = [sm.SampleOrder(f"AUTH-700{n}") for n in range(3)]
        acks = await mllp_send(
            engine.mllp_port,
            [sm.lab_order(order, f"{order.placer_order_number}-O") for order in orders],
        )
        assert all("MSA|AA" in ack for ack in acks), acks
        for order in orders:
            await engine.wait_for_status(order_id(engine, order), "ordered", timeout=60)

        stay = sm.SampleStay("V-AUTH-1", patient=sm.SamplePatient(mrn="MRN-AUTH-1"))
        [ack] = await mllp_send(engine.mllp_port, [sm.adt_event(stay, "DS-AUTH-1", "A03")])
        assert "MSA|AA" in ack
        await wait_for_finished_encounter(engine.fhir, "V-AUTH-1")

    # The lab client (the worker's, which the test also reads with) and the destination's
    # client: one token each, however many writes and reads they made.
    assert tokens_issued(auth_server) == 2


async def test_no_credentials_goes_to_review_after_one_attempt(
    temporal_client: Client, auth_server: str
) -> None:
    async with running_engine(
        temporal_client, auth_server, task_queue="careweave-test-fhir-no-auth"
    ) as engine:
        order = sm.SampleOrder("AUTH-7101")
        await mllp_send(engine.mllp_port, [sm.lab_order(order, "AUTH-7101-O")])
        pending = await engine.wait_for_review(order_id(engine, order))
        assert pending["reason"] == "fhir-rejected"
        assert "HTTP 401" in str(pending["summary"])
        description = await engine.handle(order_id(engine, order)).describe()
        assert not description.raw_description.pending_activities  # no retry loop
