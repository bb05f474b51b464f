"""The discharge end-to-end modules' stack: two partner systems and an engine routing to
them and to the session's FHIR server. Module-scoped, each module on its own task queue,
so one module's leftover queues never reach the next module's partners."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.support.discharge import PSEUDONYM_KEY, ROUTING
from tests.support.engine import Engine, running_engine
from tests.support.partner import Partner, running_partner


@pytest.fixture(scope="module")
def partners() -> Iterator[dict[str, Partner]]:
    with running_partner("primary-care") as primary_care, running_partner("billing") as billing:
        yield {"primary-care": primary_care, "billing": billing}


@pytest.fixture(scope="module")
async def discharge_engine(
    request: pytest.FixtureRequest,
    temporal_client: Client,
    fhir_base_url: str,
    partners: dict[str, Partner],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Engine]:
    routing = tmp_path_factory.mktemp("routing") / "destinations.toml"
    routing.write_text(
        ROUTING.format(
            fhir=fhir_base_url,
            primary_care=partners["primary-care"].mllp_port,
            billing=partners["billing"].mllp_port,
        )
    )
    module = request.module.__name__.rsplit(".", 1)[-1]
    async with running_engine(
        temporal_client,
        fhir_base_url,
        task_queue=f"careweave-{module.replace('_', '-')}",
        destinations_file=Path(routing),
        pseudonym_key=PSEUDONYM_KEY,
    ) as engine:
        yield engine
