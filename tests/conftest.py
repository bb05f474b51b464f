"""Shared fixtures: one real Temporal dev server, one real FHIR server and one
engine (worker + MLLP gateway) per test session. Unit tests use none of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from temporalio.client import Client

from tests.support.engine import Engine, running_engine, start_temporal
from tests.support.fhir_server import running_fhir_server


@pytest.fixture(scope="session")
async def temporal_client() -> AsyncIterator[Client]:
    env = await start_temporal()
    try:
        yield env.client
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def fhir_base_url() -> Iterator[str]:
    with running_fhir_server() as base_url:
        yield base_url


@pytest.fixture(scope="session")
async def engine(temporal_client: Client, fhir_base_url: str) -> AsyncIterator[Engine]:
    async with running_engine(temporal_client, fhir_base_url) as running:
        yield running
