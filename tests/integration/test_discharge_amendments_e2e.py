"""Discharge sync after the discharge, end to end against the real FHIR server, the real
Temporal dev server and the npm MLLP partners: an A08 that amends a diagnosis without
PV1-45 keeps the Encounter finished.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from temporalio.client import Client

from tests.support.discharge import (
    running_discharge_engine,
    running_partners,
    send,
    stay,
    triggers,
    wait_condition_codes,
    wait_received,
)
from tests.support.engine import Engine
from tests.support.partner import Partner
from workers import sample_messages as sm

AMENDED_DIAGNOSES = (
    sm.SampleDiagnosis("1", "I10", "Essential (primary) hypertension", "A"),
    sm.SampleDiagnosis("2", "E11.65", "Type 2 diabetes mellitus with hyperglycemia"),
)


@pytest.fixture(scope="module")
def partners() -> Iterator[dict[str, Partner]]:
    with running_partners() as running:
        yield running


@pytest.fixture(scope="module")
async def amendments_engine(
    temporal_client: Client,
    fhir_base_url: str,
    partners: dict[str, Partner],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    async with running_discharge_engine(
        temporal_client,
        fhir_base_url,
        partners,
        tmp_path_factory.mktemp("routing"),
        task_queue="careweave-test-discharge-amendments",
    ) as engine:
        yield engine


async def test_amendment_without_pv1_45_keeps_the_encounter_finished(
    amendments_engine: Engine, partners: dict[str, Partner]
) -> None:
    engine = amendments_engine
    discharged = stay("V-6001", "MRN6001")
    amended = stay("V-6001", "MRN6001", diagnoses=AMENDED_DIAGNOSES)
    update = sm.adt_event(amended, "DS-6001-2", "A08", discharge_fields=False)
    assert "|20261125094500" not in update  # no PV1-45, no PV1-36
    await send(engine, sm.adt_event(discharged, "DS-6001-1", "A03"), update)

    billing = await wait_received(partners["billing"], "V-6001", 2)
    assert triggers(billing) == ["A03", "A08"]
    assert "E11.65" in billing[-1]["text"]

    # The A08 was written (the Condition amended in place) ...
    found = await wait_condition_codes(engine, "V-6001", ["E11.65", "I10"])
    # ... and its full PUT of the Encounter kept the discharge the A03 wrote.
    assert found["status"] == "finished"
    assert found["period"]["end"].startswith("2026-11-25")
    assert found["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "home"
    assert found["meta"]["tag"][0]["code"] == "adt-v2"
