"""The discharge end-to-end modules' stack: two partner systems and an engine routing to
them and to the session's FHIR server. Module-scoped, each module on its own task queue,
so one module's leftover queues never reach the next module's partners."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from temporalio.client import Client

from tests.support.discharge import running_discharge_engine, running_partners
from tests.support.engine import Engine
from tests.support.partner import Partner


@pytest.fixture(scope="module")
def partners() -> Iterator[dict[str, Partner]]:
    with running_partners() as running:
        yield running


@pytest.fixture(scope="module")
async def discharge_engine(
    request: pytest.FixtureRequest,
    temporal_client: Client,
    fhir_base_url: str,
    partners: dict[str, Partner],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    module = request.module.__name__.rsplit(".", 1)[-1]
    async with running_discharge_engine(
        temporal_client,
        fhir_base_url,
        partners,
        tmp_path_factory.mktemp("routing"),
        task_queue=f"careweave-{module.replace('_', '-')}",
    ) as engine:
        yield engine
