"""The production shape's front door: two `careweave gateway` processes (separate MLLP
ports, as behind a load balancer) on one Temporal dev server and one PostgreSQL database.

A message acknowledged by gateway A and resent to gateway B (the sender's connection went
to the other one) is acknowledged by B too and starts no second exchange; refusals and
RECEIVE rows written by both at once interleave into one audit chain that
`careweave audit verify` accepts, with no row lost.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.database import CareweaveStore
from models.records import QuarantineStatus
from tests.support.engine import TEST_KEY_RING, mllp_send
from tests.support.postgres import PostgresServer
from tests.support.processes import careweave_env, careweave_process, dev_server
from workers import sample_messages as sm
from workers.temporal_client import connect_to

pytestmark = pytest.mark.integration

LISTENING = r"MLLP gateway listening on \S+:(\d+)"
# Each gateway gets this many new orders and this many refusals, sent while the other
# gateway is busy with its own: their audit rows race for the chain's tail.
ORDERS_EACH = 6
REFUSALS_EACH = 2


def order(number: str) -> str:
    return sm.lab_order(sm.SampleOrder(placer_order_number=f"PG{number}"), f"PG-{number}-O")


def unsupported(number: str) -> str:
    # A well-formed header with a message type no exchange takes: refused and quarantined.
    return (
        f"MSH|^~\\&|{sm.HOSPITAL_APP}|{sm.HOSPITAL}|{sm.LAB_APP}|{sm.LAB}|20250101120000||"
        f"ZZZ^Z99|PG-{number}-X|P|2.5\r"
    )


def ack_code(ack: str) -> str:
    [msa] = [segment for segment in ack.split("\r") if segment.startswith("MSA|")]
    return msa.split("|")[1]


async def test_two_gateways_share_receipts_quarantine_and_one_audit_chain(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    database_url = postgres.new_database()
    with dev_server(tmp_path) as temporal:
        shared = {
            "database_url": database_url,
            "task_queue": "careweave-two-gateways",
            "mllp_port": "0",
            # Every gateway must compute the same exchange for the same business key.
            "pseudonym_key": "two gateways, one pseudonym key",
        }
        env_a = careweave_env(tmp_path / "gateway-a", temporal.address, **shared)
        env_b = careweave_env(tmp_path / "gateway-b", temporal.address, **shared)
        async with (
            careweave_process("gateway", env=env_a) as gateway_a,
            careweave_process("gateway", env=env_b) as gateway_b,
        ):
            port_a = int((await gateway_a.wait_for_line(LISTENING))[1])
            port_b = int((await gateway_b.wait_for_line(LISTENING))[1])

            first = order("1000")
            [ack_from_a] = await mllp_send(port_a, [first])
            [ack_from_b] = await mllp_send(port_b, [first])
            assert ack_code(ack_from_a) == "AA", ack_from_a
            assert ack_code(ack_from_b) == "AA", ack_from_b

            feeds = [
                [order(f"{side}{n}") for n in range(ORDERS_EACH)]
                + [unsupported(f"{side}{n}") for n in range(REFUSALS_EACH)]
                for side in ("A", "B")
            ]
            acks_a, acks_b = await asyncio.gather(
                mllp_send(port_a, list(feeds[0])), mllp_send(port_b, list(feeds[1]))
            )
            for acks in (acks_a, acks_b):
                codes = [ack_code(ack) for ack in acks]
                assert codes[:ORDERS_EACH] == ["AA"] * ORDERS_EACH, acks
                assert all(code in {"AE", "AR"} for code in codes[ORDERS_EACH:]), acks

        store = CareweaveStore.from_url(database_url, TEST_KEY_RING)
        receipt = store.receipt(sm.HOSPITAL, "PG-1000-O")
        assert receipt is not None
        client = await connect_to(temporal.address, TEST_KEY_RING)
        runs = [
            execution
            async for execution in client.list_workflows(f"WorkflowId = '{receipt.workflow_id}'")
        ]
        assert len(runs) == 1, "the resend to gateway B started a second exchange"
        # Every other order started its own exchange, whichever gateway took it.
        others = [
            store.receipt(sm.HOSPITAL, f"PG-{side}{n}-O")
            for side in "AB"
            for n in range(ORDERS_EACH)
        ]
        exchanges = {other.workflow_id for other in others if other is not None}
        assert len(exchanges - {receipt.workflow_id}) == 2 * ORDERS_EACH
        assert store.quarantine_count(QuarantineStatus.HELD.value) == 2 * REFUSALS_EACH

        sent = 2 + 2 * (ORDERS_EACH + REFUSALS_EACH)  # each message, resend included, has a row
        async with careweave_process("audit", "verify", env=env_a) as verify:
            await verify.wait_for_line(rf"^{sent} rows checked, chain OK")
            assert await verify.process.wait() == 0
