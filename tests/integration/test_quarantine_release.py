"""An operator fixes a quarantined message and releases it into its exchange
(real gateway, real Temporal); a message still wrong stays held."""

from __future__ import annotations

import pytest

from adapters.hl7v2.ack import parse_ack
from models.records import QuarantineStatus
from tests.support.engine import Engine, mllp_send
from workers import sample_messages as sm
from workers.quarantine import ReleaseRefused, release


async def test_fixed_message_is_released_into_its_exchange(engine: Engine) -> None:
    order = sm.SampleOrder("REL-2001")
    good = sm.lab_order(order, "REL-2001-O")
    broken = good.replace("\rORC|", "\rXRC|", 1)  # an order without ORC
    [ack] = await mllp_send(engine.mllp_port, [broken])
    assert parse_ack(ack)[0] == "AE"
    [held] = engine.store.quarantined(limit=1)
    assert held.status == QuarantineStatus.HELD.value
    assert held.control_id == "REL-2001-O"

    # Released as kept: still refused, still held, nothing started.
    with pytest.raises(ReleaseRefused, match="still refused"):
        await release(engine.store, engine.intake, held.id or 0, released_by="ops1")
    assert engine.store.quarantined_message(held.id or 0).status == QuarantineStatus.HELD.value

    released = await release(
        engine.store, engine.intake, held.id or 0, released_by="ops1", fixed_payload=good.encode()
    )
    assert released.workflow_id == engine.lab_workflow_id("REL-2001")
    await engine.wait_for_status(released.workflow_id, "ordered")
    row = engine.store.quarantined_message(held.id or 0)
    assert row is not None
    assert row.status == QuarantineStatus.RELEASED.value
    assert row.released_by == "ops1"

    with pytest.raises(ReleaseRefused, match="already released"):
        await release(engine.store, engine.intake, held.id or 0, released_by="ops1")

    # The trail: refused at the gateway, then three release attempts by the operator.
    trail = [
        record
        for record in engine.store.audit_log().records()
        if record.resource == f"QuarantinedMessage/{held.id}"
    ]
    assert [(r.action, r.actor, r.outcome) for r in trail] == [
        ("receive", f"{sm.HOSPITAL_APP}^{sm.HOSPITAL}", "refused"),
        ("release", "ops1", "refused"),
        ("release", "ops1", "success"),
        ("release", "ops1", "refused"),
    ]
    assert trail[2].exchange == released.workflow_id


async def test_unknown_quarantine_id_is_refused(engine: Engine) -> None:
    with pytest.raises(ReleaseRefused, match="no quarantined message"):
        await release(engine.store, engine.intake, 987654, released_by="ops1")
