"""Shared fixtures: one real Temporal dev server, one real FHIR server and one
engine (worker + MLLP gateway) per test session. Unit tests use none of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client

from tests.support.certs import Pki, make_test_pki
from tests.support.engine import Engine, careweave_client, running_engine, start_temporal
from tests.support.fhir_server import running_fhir_server
from tests.support.orthanc import RunningOrthanc, running_orthanc
from tests.support.postgres import PostgresServer, running_postgres

# Property tests check behaviour, not speed: on a loaded 2-core CI box one example of a
# cheap test took 548 ms, past hypothesis' 200 ms default deadline, and failed the run.
settings.register_profile("careweave", deadline=None)
settings.load_profile("careweave")

# Every span of the session is kept in memory so tests can follow one message's trace.
SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    return SPANS


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with server and client certificates, made for this session."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
async def temporal_client() -> AsyncIterator[Client]:
    env = await start_temporal()
    try:
        yield await careweave_client(env)
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Unit tests first: they run synchronously on the event loop thread, and after the
    # integration tests the session's worker still has exchanges to drive (timers), which
    # a blocked loop would hold up.
    items.sort(key=lambda item: "integration" in item.nodeid.split("::")[0])


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (Debian's package, `make test`
    installs it); each test that needs one asks it for a database of its own."""
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty Careweave database on each backend Careweave supports: a SQLite file (the
    embedded default) and a fresh database on the session's PostgreSQL (production)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'careweave.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture(scope="session")
def orthanc() -> Iterator[RunningOrthanc]:
    """Debian's Orthanc on the project's configuration (`make test` installs it)."""
    with running_orthanc() as running:
        yield running
