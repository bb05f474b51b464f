"""The Temporal worker: every exchange's workflows and activities on one task queue."""

from __future__ import annotations

import concurrent.futures

from temporalio.client import Client
from temporalio.worker import Worker

from activities.order_to_result import FhirActivities, interpret_lab_order, interpret_lab_result
from adapters.fhir import FhirClient
from models.settings import Settings
from workflows.order_to_result import OrderToResult

WORKFLOWS = [OrderToResult]


def build_worker(client: Client, settings: Settings, fhir: FhirClient) -> Worker:
    fhir_activities = FhirActivities(fhir)
    return Worker(
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
        ],
        # hl7apy's parse is CPU-bound; a small pool keeps it off the event loop.
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=8),
    )
