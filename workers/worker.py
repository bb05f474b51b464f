"""The Temporal worker: every exchange's workflows and activities on one task queue."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import AsyncIterator

from temporalio.client import Client
from temporalio.worker import Worker

from activities.discharge import DischargeActivities, interpret_adt
from activities.discharge_history import DischargeHistoryActivities
from activities.order_to_result import FhirActivities, interpret_lab_order, interpret_lab_result
from adapters.audit_log import AuditLog
from adapters.database import open_engine
from adapters.fhir import FhirClient, auth_from_config
from models.destinations import RoutingConfig, load_routing
from models.settings import Settings
from workers.audit_interceptor import AuditInterceptor
from workflows.discharge_sync import DischargeSync
from workflows.order_to_result import OrderToResult
from workflows.ordered_delivery import OrderedDelivery

WORKFLOWS = [OrderToResult, DischargeSync, OrderedDelivery]


def lab_fhir_client(settings: Settings, *, timeout: float | None = None) -> FhirClient:
    """The client of the lab-result server (fhir_base_url) with its CAREWEAVE_FHIR_* credentials.

    Raises FhirAuthConfigError naming the variable, environment variable or key file at fault.
    """
    seconds = timeout or settings.fhir_timeout_seconds
    auth = auth_from_config(
        settings.fhir_auth(),
        where=f"lab-result FHIR server (CAREWEAVE_FHIR_AUTH_KIND={settings.fhir_auth_kind})",
        timeout=seconds,
    )
    return FhirClient(settings.fhir_base_url, timeout=seconds, auth=auth)


@contextlib.asynccontextmanager
async def open_worker(
    client: Client,
    settings: Settings,
    fhir: FhirClient,
    *,
    routing: RoutingConfig | None = None,
    audit_log: AuditLog | None = None,
) -> AsyncIterator[Worker]:
    """The worker, built but not started; when the block ends (stop the worker inside it:
    ``async with worker``, ``await worker.run()`` or ``worker.shutdown()``) the connections
    its activities keep to destinations and its activity threads are closed.

    The routing file is read here, once: a bad file stops the worker with its error, and
    so does a FHIR destination whose credential is missing (FhirAuthConfigError).

    Every activity execution is audited into ``audit_log`` (default: Careweave's database).
    ``fhir`` (the lab-result server) belongs to the caller, who closes it.
    """
    if audit_log is None:
        audit_log = AuditLog(open_engine(settings.resolved_database_url))
    fhir_activities = FhirActivities(fhir)
    discharge = DischargeActivities(
        client,
        routing or load_routing(settings.destinations_file),
        task_queue=settings.task_queue,
        idle_close_seconds=settings.delivery_idle_close_seconds,
    )
    discharge_history = DischargeHistoryActivities(client)
    # hl7apy's parse is CPU-bound; a small pool keeps it off the event loop.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    try:
        yield Worker(
            client,
            task_queue=settings.task_queue,
            workflows=WORKFLOWS,
            activities=[
                interpret_lab_order,
                interpret_lab_result,
                fhir_activities.publish_service_request,
                fhir_activities.publish_lab_result,
                fhir_activities.find_service_request,
                fhir_activities.raise_escalation_task,
                interpret_adt,
                discharge.routing_for,
                discharge.enqueue_delivery,
                discharge.deliver_to_fhir,
                discharge.deliver_to_mllp,
                discharge_history.closed_discharge,
            ],
            activity_executor=executor,
            interceptors=[AuditInterceptor(audit_log)],
        )
    finally:
        await discharge.aclose()
        executor.shutdown(wait=False)
