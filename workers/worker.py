"""The Temporal worker: every registered exchange's workflows and activities on one task queue."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from adapters.audit_log import AuditLog
from adapters.database import open_engine
from adapters.decision_proof import DecisionProofKeys
from adapters.fhir import FhirClient, auth_from_config
from adapters.tls import TlsConfigError, client_tls_context
from exchanges.registry import REGISTRY
from exchanges.sdk import ExchangeRegistry, WorkerDependencies
from models.destinations import RoutingConfig, load_routing
from models.errors import ConfigurationError
from models.settings import Settings
from workers.audit_interceptor import AuditInterceptor
from workers.decision_proof_interceptor import DecisionProofInterceptor
from workers.exchange_duration_interceptor import ExchangeDurationInterceptor
from workers.payload_codec import EncryptionCodec
from workers.refusal_audit import RefusalAudit

# Modules loaded once for the worker instead of again in every workflow run's sandbox. The
# sandbox re-executes each module it does not pass through whenever a run starts (or is
# replayed after eviction): for Careweave's workflow modules that was most of the CPU a new
# exchange cost (bench/e2e.py, docs/benchmarks.md). The workflow modules hold no mutable
# module state, and their determinism is still checked under the full sandbox: the replay
# tests (tests/replay) run every recorded history with the SDK's default, strict runner, so
# a restricted call (time, random, I/O) on a recorded path fails there, not in production.
SANDBOX_PASSTHROUGH = (
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "models",
    "mappings",
    "activities",
    "adapters",
    "workflows",
)
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*SANDBOX_PASSTHROUGH)
)


def lab_fhir_client(settings: Settings, *, timeout: float | None = None) -> FhirClient:
    """The client of the lab-result server (fhir_base_url) with its CAREWEAVE_FHIR_* credentials
    and CAREWEAVE_FHIR_TLS_* files.

    Raises FhirAuthConfigError naming the variable, environment variable or key file at fault,
    TlsConfigError naming the TLS setting or file.
    """
    seconds = timeout or settings.fhir_timeout_seconds
    tls = lab_fhir_tls_context(settings)
    auth = auth_from_config(
        settings.fhir_auth(),
        where=f"lab-result FHIR server (CAREWEAVE_FHIR_AUTH_KIND={settings.fhir_auth_kind})",
        timeout=seconds,
        tls=tls,
    )
    return FhirClient(settings.fhir_base_url, timeout=seconds, auth=auth, tls=tls)


def lab_fhir_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The lab-result server's TLS context from CAREWEAVE_FHIR_TLS_*; None when none is set
    (an https:// server is then verified against the system's CAs).

    Raises TlsConfigError naming the setting or the file that cannot be used.
    """
    ca, cert, key = (
        settings.fhir_tls_ca_file,
        settings.fhir_tls_cert_file,
        settings.fhir_tls_key_file,
    )
    if ca is None and cert is None and key is None:
        return None
    if not settings.fhir_base_url.lower().startswith("https://"):
        raise TlsConfigError(
            "CAREWEAVE_FHIR_TLS_* is set but CAREWEAVE_FHIR_BASE_URL "
            f"{settings.fhir_base_url} is not https://"
        )
    if (cert is None) != (key is None):
        missing = "CERT" if cert is None else "KEY"
        raise TlsConfigError(
            f"CAREWEAVE_FHIR_TLS_{missing}_FILE is not set: a client certificate needs both "
            "the certificate file and the key file"
        )
    try:
        return client_tls_context(ca_file=ca, cert_file=cert, key_file=key)
    except TlsConfigError as err:
        raise TlsConfigError(f"CAREWEAVE_FHIR_TLS_*: {err}") from err


@contextlib.asynccontextmanager
async def open_worker(
    client: Client,
    settings: Settings,
    fhir: FhirClient,
    *,
    routing: RoutingConfig | None = None,
    audit_log: AuditLog | None = None,
    registry: ExchangeRegistry = REGISTRY,
) -> AsyncIterator[Worker]:
    """The worker of every exchange and shared step in ``registry``, built but not started;
    when the block ends (stop the worker inside it: ``async with worker``,
    ``await worker.run()`` or ``worker.shutdown()``) the connections its activities keep to
    destinations and its activity threads are closed.

    The routing file is read here, once: a bad file stops the worker with its error, and
    so does a FHIR destination whose credential is missing (FhirAuthConfigError) or a
    destination whose TLS file cannot be used (RoutingConfigError).

    Every activity execution is audited into ``audit_log`` (default: Careweave's database);
    an activity whose exchange declares no audit action for it stops the worker here
    (ExchangeDefinitionError). So is every refusal: a payload that is not Careweave's
    ciphertext (``client`` must be connected with Careweave's codec, else
    ConfigurationError), and a review decision without the API's proof (checked against
    settings.resolved_decision_public_key_files).
    ``fhir`` (the lab-result server) belongs to the caller, who closes it.
    """
    if audit_log is None:
        audit_log = AuditLog(open_engine(settings.resolved_database_url))
    refusals = RefusalAudit(audit_log, asyncio.get_running_loop())
    worker_client = _refusing_client(client, refusals)
    decision_keys = DecisionProofKeys(
        settings.resolved_decision_public_key_files, issuer=settings.auth_issuer
    )
    # Synchronous activities (the parse + map ones) run in this pool, off the event loop.
    # One thread per slot the worker may fill at once, as the SDK asks (it warns when the
    # pool is smaller than max_concurrent_activities): the GIL, not the thread count,
    # bounds their CPU, and an idle thread costs only its stack.
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=settings.worker_max_concurrent_activities
        + settings.worker_max_concurrent_local_activities,
        thread_name_prefix="careweave-activity",
    )
    async with contextlib.AsyncExitStack() as on_close:
        on_close.callback(executor.shutdown, wait=False)
        on_close.push_async_callback(refusals.drain)
        dependencies = WorkerDependencies(
            client=client,
            settings=settings,
            fhir=fhir,
            routing=routing or load_routing(settings.destinations_file),
            on_close=on_close,
        )
        yield Worker(
            worker_client,
            task_queue=settings.task_queue,
            workflows=registry.workflows(),
            activities=registry.activities(dependencies),
            activity_executor=executor,
            workflow_runner=WORKFLOW_RUNNER,
            max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
            max_concurrent_activities=settings.worker_max_concurrent_activities,
            max_concurrent_local_activities=settings.worker_max_concurrent_local_activities,
            interceptors=[
                AuditInterceptor(audit_log, registry.audit_actions()),
                DecisionProofInterceptor(decision_keys, refusals.decision_refused),
                ExchangeDurationInterceptor(),
            ],
        )


def _refusing_client(client: Client, refusals: RefusalAudit) -> Client:
    """``client``'s connection with a codec that audits each payload it refuses (the
    worker's own, so no other user of ``client`` writes those rows)."""
    codec = client.data_converter.payload_codec
    if not isinstance(codec, EncryptionCodec):
        raise ConfigurationError(
            "the worker's Temporal client has no Careweave payload codec: connect it with "
            "workers.temporal_client.connect, so that unencrypted payloads are refused"
        )
    converter = dataclasses.replace(
        client.data_converter, payload_codec=codec.reporting_refusals(refusals.payload_refused)
    )
    config = client.config()
    config["data_converter"] = converter
    return Client(**config)
