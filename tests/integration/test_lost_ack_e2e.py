"""An ACK lost on its way back, end to end: a partner system (partners/partner.js) receives
and acknowledges a discharge event, but a proxy on our side of the wire swallows that one
ACK. Careweave, hearing nothing within the destination's ACK timeout, sends the message
again, once, under the same MSH-10 (so the partner can recognise it), before that patient's
next event; every other message reaches the partner exactly once. Patients MRN64xx.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import pytest
from temporalio.client import Client

from models.destination_health import HealthState
from tests.support.ack_dropping_proxy import AckDroppingProxy, ack_dropping_proxy
from tests.support.destination_health import wait_health
from tests.support.discharge import (
    PSEUDONYM_KEY,
    delivery_id,
    received,
    send,
    stay,
    wait_delivery_log,
)
from tests.support.engine import Engine, running_engine
from tests.support.partner import Partner, running_partner
from workers import sample_messages as sm

PATIENTS = ["6401", "6402", "6403"]
EVENTS = ["A03", "A13", "A03"]
# The ACK lost: patient 6402's cancel of discharge (its second event), first sending.
LOST_VISIT, LOST_TRIGGER = "V-6402", "A13"

ROUTING = """
version = "lost-ack-1"

[[destination]]
name = "primary-care"
kind = "mllp"
subscribes = ["A03", "A13"]
[destination.mllp]
host = "127.0.0.1"
port = {port}
receiving_application = "PCEHR"
receiving_facility = "NORTHCLINIC"
ack_timeout_seconds = 1.5
[destination.policy]
max_attempts = 3
first_retry_seconds = 0.2
max_retry_seconds = 1
"""


@pytest.fixture(scope="module")
def partner() -> Iterator[Partner]:
    with running_partner("primary-care") as running:
        yield running


@pytest.fixture(scope="module")
async def proxy(partner: Partner) -> AsyncIterator[AckDroppingProxy]:
    async with ack_dropping_proxy(
        partner.host,
        partner.mllp_port,
        lambda text: f"|{LOST_VISIT}^" in text and f"ADT^{LOST_TRIGGER}" in text,
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def engine(
    temporal_client: Client,
    fhir_base_url: str,
    proxy: AckDroppingProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    routing = tmp_path_factory.mktemp("routing") / "destinations.toml"
    routing.write_text(ROUTING.format(port=proxy.port))
    async with running_engine(
        temporal_client,
        fhir_base_url,
        destinations_file=routing,
        pseudonym_key=PSEUDONYM_KEY,
        task_queue="careweave-lost-ack",
        destination_failures_to_trip=3,
    ) as running:
        yield running


def event_time(message: dict[str, Any]) -> str:
    """EVN-2 as sent: which of the patient's events this is."""
    [evn] = [s for s in message["text"].split("\r") if s.startswith("EVN|")]
    return str(evn.split("|")[2])


async def test_a_lost_ack_costs_one_resend_under_the_same_control_id(
    engine: Engine, partner: Partner, proxy: AckDroppingProxy
) -> None:
    for number in PATIENTS:
        await send(
            engine,
            *[
                sm.adt_event(
                    stay(f"V-{number}", f"MRN{number}"),
                    f"LA-{number}-{n}",
                    trigger,
                    when=datetime(2026, 11, 25, 10, n),
                )
                for n, trigger in enumerate(EVENTS, start=1)
            ],
        )
    logs = {
        number: await wait_delivery_log(
            engine, delivery_id("primary-care", f"MRN{number}"), len(EVENTS), timeout=60
        )
        for number in PATIENTS
    }
    assert proxy.target_control_id is not None
    assert proxy.dropped_acks == [proxy.target_control_id]

    everything = await partner.amessages()
    receipts = Counter(m["control_id"] for m in everything)
    # The message whose ACK was lost came once more, and only once; nothing else twice.
    assert receipts.pop(proxy.target_control_id) == 2
    assert set(receipts.values()) == {1}, receipts
    assert len(receipts) == len(PATIENTS) * len(EVENTS) - 1

    for number in PATIENTS:
        messages = await received(partner, f"V-{number}")
        # The partner answered every copy: it did receive (and would have applied) the first.
        assert {m["answered"] for m in messages} == {"AA"}
        sent_times = [datetime(2026, 11, 25, 10, n).strftime("%Y%m%d%H%M%S") for n in (1, 2, 3)]
        if f"V-{number}" != LOST_VISIT:
            assert [event_time(m) for m in messages] == sent_times
            assert [e["attempts"] for e in logs[number]] == [1, 1, 1]
            continue
        # The resend came straight after the first copy, before the patient's next event,
        # byte for byte the same message: a receiver keyed on MSH-10 applies it once.
        assert [event_time(m) for m in messages] == [
            sent_times[0],
            *sent_times[1:2] * 2,
            sent_times[2],
        ]
        first, again = messages[1], messages[2]
        assert first["control_id"] == again["control_id"] == proxy.target_control_id
        assert first["text"] == again["text"]
        # What a receiver de-duplicating on MSH-10 applies: each event once.
        assert len({m["control_id"] for m in messages}) == len(EVENTS)
        assert [e["outcome"] for e in logs[number]] == ["delivered"] * len(EVENTS)
        assert [e["attempts"] for e in logs[number]] == [1, 2, 1]

    for number in PATIENTS:
        queue = engine.handle(delivery_id("primary-care", f"MRN{number}"))
        assert await queue.query("pending_review") is None
    # One lost ACK is one failure, far from a trip: the destination is up.
    status = await wait_health(engine, "primary-care", lambda s: s.state is HealthState.UP, "up")
    assert status.held_events == 0
