"""The production shape under faults, end to end: the Temporal dev server, the FHIR server,
the `billing` partner, `careweave worker` and `careweave gateway` processes on one
PostgreSQL database (tests/support/production_shape.py). A stream of lab orders, results,
corrections, discharges and A08s from concurrent MLLP senders that resend until AA
(tests/support/soak.py) keeps going while processes are SIGKILLed and the FHIR server is
frozen; at the end every acknowledged message is in FHIR and at the partner, once, in each
patient's order. No timing is asserted: bench/soak.py reports the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer
from tests.support.production_shape import ProductionShape, production_shape
from tests.support.soak import (
    Fault,
    PatientScript,
    at,
    fhir_frozen,
    gateway_killed,
    mixed_feed,
    run_soak,
    temporal_killed,
    worker_killed,
)

pytestmark = pytest.mark.integration

# A tripped destination is probed soon and often, as in the other end-to-end tests.
FAST_RECOVERY = {
    "destination_first_probe_seconds": "0.5",
    "destination_max_probe_seconds": "2.0",
    "destination_probe_timeout_seconds": "3.0",
}
# The make-test soak, the 1,000 messages: the faults land while messages are being
# sent and processed on both workers (hundreds of exchanges open at once), and it runs in a
# few minutes on a 2-core machine; bench/soak.py runs the 10,000-message one with a 30 s
# freeze.
SOAK_MESSAGES = 1000
SOAK_FREEZE_SECONDS = 10


def distinct(scripts: list[PatientScript]) -> int:
    return sum(len(script.kinds) for script in scripts)


def report_failure(shape: ProductionShape) -> str:
    return "\n".join(
        f"--- {service.name} ---\n" + "\n".join(service.output[-30:])
        for service in [*shape.workers, *shape.gateways]
    )


def worker_killed_for_good(index: int) -> Fault:
    """SIGKILL, and no new process: the other worker on the task queue must do the rest."""

    async def action(shape: ProductionShape) -> None:
        await shape.workers[index].kill()

    return Fault(0, f"SIGKILL worker-{index + 1} for good", action)


async def test_two_workers_on_one_task_queue_keep_going_while_one_is_killed(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    scripts = mixed_feed(80, tag="TW")
    async with production_shape(
        tmp_path,
        postgres.new_database(),
        workers=2,
        gateways=1,
        task_queue="careweave-two-workers",
        settings=FAST_RECOVERY,
    ) as shape:
        report = await run_soak(
            shape,
            scripts,
            # A third of the way in: exchanges are open on both workers, more are coming.
            [at(0.3, worker_killed_for_good(0))],
            senders=4,
            rate=8,
            drain_timeout=300,
        )
        assert not shape.workers[0].running and shape.workers[0].starts == 1
        assert shape.workers[1].running and shape.workers[1].starts == 1
        failure = report_failure(shape)
    figures, found = report.figures, report.findings
    assert figures.acknowledged == figures.sent == distinct(scripts), figures
    assert found.clean, f"{found.summary()}\n{failure}"
    assert found.checked["lab orders"] + found.checked["discharges"] == len(scripts)


async def test_soak_under_faults_loses_duplicates_and_reorders_nothing(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    scripts = mixed_feed(SOAK_MESSAGES, tag="SQ")
    async with production_shape(
        tmp_path,
        postgres.new_database(),
        workers=2,
        gateways=2,
        task_queue="careweave-soak-test",
        settings=FAST_RECOVERY,
    ) as shape:
        report = await run_soak(
            shape,
            scripts,
            [
                at(0.15, worker_killed(0)),
                at(0.35, gateway_killed(0)),
                at(0.55, temporal_killed()),
                at(0.75, fhir_frozen(SOAK_FREEZE_SECONDS)),
            ],
            senders=8,
            rate=12,
            drain_timeout=900,
        )
        assert shape.workers[0].starts == 2 and shape.gateways[0].starts == 2
        failure = report_failure(shape)
    figures, found = report.figures, report.findings
    assert len(report.faults) == 4, report.faults
    assert figures.gave_up == []
    assert figures.acknowledged == figures.sent == distinct(scripts), figures
    assert found.clean, f"{found.summary()}\n{failure}"
    assert found.checked["lab orders"] + found.checked["discharges"] == len(scripts)
